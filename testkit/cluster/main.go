// copycat-cluster: a real Kubernetes control plane for copycat's tests, built from the Kubernetes
// Go modules of one release (see go.mod). Test support only; the product is Rust.
//
//	copycat-cluster run --dir DIR      etcd (in process), kube-apiserver and kube-controller-manager
//	                                   (child processes) on free 127.0.0.1 ports; writes DIR/kubeconfig
//	copycat-cluster kube-apiserver …   the real kube-apiserver command
//	copycat-cluster kube-controller-manager …
//	copycat-cluster kubectl …          the real kubectl command
//
// `run` prints `ready <server> <seconds>` once the API server answers /readyz and the controller
// manager has created the default ServiceAccount; SIGUSR1 restarts the API server (same port, same
// etcd data) and prints `restarted <server> <seconds>`; SIGTERM or SIGINT stops everything.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as in the upstream commands

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

const usage = `usage:
  copycat-cluster run --dir DIR [--timeout SECONDS]
  copycat-cluster kube-apiserver|kube-controller-manager|kubectl [ARGS…]`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	command, args := os.Args[1], os.Args[2:]
	// The upstream commands parse os.Args themselves: make them see their own name and arguments.
	os.Args = append([]string{command}, args...)
	switch command {
	case "run":
		os.Exit(run(args))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kubectl":
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "-h", "--help", "help":
		fmt.Println(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n%s\n", command, usage)
		os.Exit(2)
	}
}
