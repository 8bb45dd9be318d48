//! `copycat plan-tags SOURCE PATTERN [--rc]`: the tags an `Image` object's version pattern would
//! copy today, sorted by version.

use std::process::ExitCode;

use super::{EXIT_FAILED, usage};
use crate::cli::PlanTagsArgs;
use crate::config::Config;
use crate::reference::{self, ImageRef};
use crate::tag_pattern::VersionPattern;
use crate::wiring;

/// Prints every tag of SOURCE that PATTERN matches, one a line, oldest version first; a summary
/// goes to stderr. Exit 2 for a bad SOURCE or PATTERN, 1 when the tags cannot be listed.
pub async fn plan_tags(config: &Config, args: &PlanTagsArgs) -> ExitCode {
    let pattern = match VersionPattern::parse(&args.pattern) {
        Ok(p) => p,
        Err(e) => return usage(&format!("PATTERN: {e}")),
    };
    if reference::has_explicit_tag(&args.source) || args.source.contains('@') {
        return usage(&format!(
            "SOURCE {:?}: name the repository without a tag or digest; PATTERN picks the tags",
            args.source
        ));
    }
    let source = match ImageRef::parse(&args.source) {
        Ok(r) => r,
        Err(e) => return usage(&format!("SOURCE: {e}")),
    };
    let registries = match wiring::registries(config, &[]) {
        Ok(r) => r,
        Err(e) => return usage(&e.to_string()),
    };
    let tags = match registries.get(source.registry()).list_tags(source.repository()).await {
        Ok(tags) => tags,
        Err(e) => {
            eprintln!("copycat: listing the tags of {}: {e}", source.name());
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let matched = pattern.select(tags.iter().map(String::as_str), args.rc);
    for tag in &matched {
        println!("{tag}");
    }
    eprintln!(
        "{} of {} tags of {} match {}{}",
        matched.len(),
        tags.len(),
        source.name(),
        args.pattern,
        if args.rc { " (candidate releases included)" } else { "" }
    );
    ExitCode::SUCCESS
}
