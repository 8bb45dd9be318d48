package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// The controllers a test cluster runs: workloads make their ReplicaSets, Pods and Jobs, namespaces
// get their default ServiceAccount and CA bundle, garbage collection and finalizers work. Node,
// volume, certificate and cloud controllers have nothing to do without kubelets.
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"statefulset-controller",
	"daemonset-controller",
	"job-controller",
	"cronjob-controller",
	"ttl-after-finished-controller",
	"garbage-collector-controller",
	"namespace-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
	"pod-garbage-collector-controller",
}

// state is DIR/cluster.json: what scripts and tests need to talk to the cluster and to stop it.
type state struct {
	Server               string `json:"server"`
	Kubeconfig           string `json:"kubeconfig"`
	Etcd                 string `json:"etcd"`
	Pid                  int    `json:"pid"`
	APIServerPid         int    `json:"apiserverPid"`
	ControllerManagerPid int    `json:"controllerManagerPid"`
	APIServerStarts      int    `json:"apiserverStarts"`
}

// cluster is one running control plane; the API server and controller manager are child processes
// of this one, killed with it (Pdeathsig) even if it dies without cleaning up.
type cluster struct {
	dir     string
	files   *files
	ports   ports
	etcd    *embed.Etcd
	api     *child
	cm      *child
	state   state
	timeout time.Duration
}

type ports struct{ etcdClient, etcdPeer, apiserver int }

// child is a component process and the channel its exit status arrives on.
type child struct {
	name   string
	cmd    *exec.Cmd
	exited chan error
}

func run(args []string) int {
	flags := flag.NewFlagSet("run", flag.ContinueOnError)
	dir := flags.String("dir", "", "directory for certificates, etcd data, logs and the kubeconfig (required)")
	timeout := flags.Duration("timeout", 180*time.Second, "how long to wait for the control plane to be ready")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "run: --dir is required")
		return 2
	}
	c, err := start(*dir, *timeout)
	if err != nil {
		fmt.Fprintf(os.Stderr, "copycat-cluster: %v\n", err)
		if c != nil {
			c.stop()
		}
		return 1
	}
	return c.serve()
}

func start(dir string, timeout time.Duration) (*cluster, error) {
	began := time.Now()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := writeFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("writing certificates and keys: %w", err)
	}
	p, err := freePorts()
	if err != nil {
		return nil, err
	}
	c := &cluster{dir: dir, files: f, ports: p, timeout: timeout}
	c.state = state{
		Server:     fmt.Sprintf("https://127.0.0.1:%d", p.apiserver),
		Kubeconfig: f.kubeconfig,
		Etcd:       fmt.Sprintf("http://127.0.0.1:%d", p.etcdClient),
		Pid:        os.Getpid(),
	}
	if err := f.writeKubeconfig(c.state.Server); err != nil {
		return nil, err
	}
	if err := c.startEtcd(); err != nil {
		return c, fmt.Errorf("etcd: %w", err)
	}
	if err := c.startAPIServer(); err != nil {
		return c, err
	}
	if c.cm, err = c.spawn("kube-controller-manager", c.controllerManagerArgs()); err != nil {
		return c, err
	}
	c.state.ControllerManagerPid = c.cm.cmd.Process.Pid
	// The default ServiceAccount is made by the controller manager: once it exists, Pods can be
	// created (the ServiceAccount admission plugin requires it) and the controllers run.
	if err := c.waitFor("/api/v1/namespaces/default/serviceaccounts/default", c.cm); err != nil {
		return c, fmt.Errorf("kube-controller-manager: %w (log: %s)", err, c.cm.log(dir))
	}
	if err := c.writeState(); err != nil {
		return c, err
	}
	fmt.Printf("ready %s %.1f\n", c.state.Server, time.Since(began).Seconds())
	return c, nil
}

func (c *cluster) startEtcd() error {
	cfg := embed.NewConfig()
	cfg.Name = "copycat"
	cfg.Dir = filepath.Join(c.dir, "etcd")
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(c.dir, "etcd.log")}
	client := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", c.ports.etcdClient)}
	peer := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", c.ports.etcdPeer)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// Test data: durability across a machine crash is not needed, speed on a shared disk is.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	c.etcd = e
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return err
	case <-time.After(c.timeout):
		return errors.New("not ready in time")
	}
}

func (c *cluster) startAPIServer() error {
	api, err := c.spawn("kube-apiserver", c.apiserverArgs())
	if err != nil {
		return err
	}
	c.api = api
	c.state.APIServerPid = api.cmd.Process.Pid
	c.state.APIServerStarts++
	if err := c.waitFor("/readyz", api); err != nil {
		return fmt.Errorf("kube-apiserver: %w (log: %s)", err, api.log(c.dir))
	}
	return nil
}

func (c *cluster) apiserverArgs() []string {
	f := c.files
	return []string{
		"--etcd-servers=" + c.state.Etcd,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.ports.apiserver),
		"--cert-dir=" + filepath.Join(c.dir, "apiserver"),
		"--tls-cert-file=" + f.servingCert,
		"--tls-private-key-file=" + f.servingKey,
		"--token-auth-file=" + f.tokens,
		"--authorization-mode=RBAC,Node",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + f.saPublic,
		"--service-account-signing-key-file=" + f.saPrivate,
		"--service-cluster-ip-range=10.96.0.0/16",
		// The endpoints of the `kubernetes` Service would be 127.0.0.1, which Endpoints reject.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--logging-format=text",
	}
}

func (c *cluster) controllerManagerArgs() []string {
	var list string
	for i, name := range controllers {
		if i > 0 {
			list += ","
		}
		list += name
	}
	return []string{
		"--kubeconfig=" + c.files.kubeconfig,
		"--secure-port=0",
		"--leader-elect=false",
		"--controllers=" + list,
		"--service-account-private-key-file=" + c.files.saPrivate,
		"--root-ca-file=" + c.files.caCert,
		// Tests create thousands of objects at once (the discovery benchmark: 10,000 Pods); the
		// default client rate (20/s) would make that take minutes.
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		"--concurrent-replicaset-syncs=10",
		"--concurrent-deployment-syncs=10",
		"--profiling=false",
		"--logging-format=text",
	}
}

// spawn starts this binary as one of the components, its output appended to DIR/<name>.log.
func (c *cluster) spawn(name string, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	out, err := os.OpenFile(filepath.Join(c.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	ch := &child{name: name, cmd: cmd, exited: make(chan error, 1)}
	go func() {
		ch.exited <- cmd.Wait()
		out.Close()
	}()
	return ch, nil
}

func (ch *child) log(dir string) string { return filepath.Join(dir, ch.name+".log") }

// stopChild ends a component with SIGTERM, then SIGKILL if it has not exited within 5 s (the API
// server would wait up to a minute for the controller manager's watches to end).
func stopChild(ch *child) {
	if ch == nil {
		return
	}
	_ = ch.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ch.exited:
	case <-time.After(5 * time.Second):
		_ = ch.cmd.Process.Kill()
		<-ch.exited
	}
}

// waitFor polls an API path with the admin token until it answers 200, the component exits, or
// the timeout passes.
func (c *cluster) waitFor(path string, component *child) error {
	client := c.httpClient()
	deadline := time.Now().Add(c.timeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case err := <-component.exited:
			component.exited <- err
			return fmt.Errorf("exited while starting: %v", err)
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, c.state.Server+path, nil)
		req.Header.Set("Authorization", "Bearer "+c.files.adminToken)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("GET %s not ready after %s: %s", path, c.timeout, last)
}

func (c *cluster) httpClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.files.caPEM)
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
}

func (c *cluster) writeState() error {
	data, err := json.MarshalIndent(c.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.dir, "cluster.json.tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.dir, "cluster.json"))
}

// serve waits for signals: SIGUSR1 restarts the API server, SIGTERM/SIGINT stop the cluster. A
// component that exits on its own stops the cluster with an error naming its log.
func (c *cluster) serve() int {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	for {
		select {
		case sig := <-signals:
			if sig != syscall.SIGUSR1 {
				c.stop()
				return 0
			}
			began := time.Now()
			stopChild(c.api)
			if err := c.startAPIServer(); err != nil {
				fmt.Fprintf(os.Stderr, "copycat-cluster: restarting: %v\n", err)
				c.stop()
				return 1
			}
			if err := c.writeState(); err != nil {
				fmt.Fprintf(os.Stderr, "copycat-cluster: %v\n", err)
			}
			fmt.Printf("restarted %s %.1f\n", c.state.Server, time.Since(began).Seconds())
		case err := <-c.api.exited:
			fmt.Fprintf(os.Stderr, "copycat-cluster: kube-apiserver exited: %v (log: %s)\n", err, c.api.log(c.dir))
			c.api = nil
			c.stop()
			return 1
		case err := <-c.cm.exited:
			fmt.Fprintf(os.Stderr, "copycat-cluster: kube-controller-manager exited: %v (log: %s)\n", err, c.cm.log(c.dir))
			c.cm = nil
			c.stop()
			return 1
		case err := <-c.etcd.Err():
			fmt.Fprintf(os.Stderr, "copycat-cluster: etcd failed: %v\n", err)
			c.stop()
			return 1
		}
	}
}

func (c *cluster) stop() {
	stopChild(c.cm)
	stopChild(c.api)
	if c.etcd != nil {
		c.etcd.Close()
	}
	os.Remove(filepath.Join(c.dir, "cluster.json"))
}

// freePorts asks the kernel for three free loopback ports.
func freePorts() (ports, error) {
	var got [3]int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for i := range got {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, err
		}
		listeners = append(listeners, l)
		got[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports{etcdClient: got[0], etcdPeer: got[1], apiserver: got[2]}, nil
}
