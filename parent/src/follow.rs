//! The CLI following a campaign in the parent: a live progress line (done,
//! failed, acting, waiting, elapsed, ETA) while it runs, the summary at the
//! end. Ctrl-C detaches; the campaign goes on in the parent.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::campaign::Progress;
use crate::client::{Client, ClientError};

/// The campaign flags' parser, where the binary has always found it.
pub use crate::duration::parse_duration;

/// One progress line.
pub fn progress_line(p: &Progress) -> String {
    let done = p.passed + p.failed + p.did_not_participate;
    let elapsed_ms = p
        .finished_at
        .unwrap_or_else(fleetls_proto::now_ms)
        .saturating_sub(p.started_at);
    let eta = if done > 0 && done < p.total {
        let per_child = elapsed_ms as f64 / done as f64;
        format!("{:.0}s", per_child * (p.total - done) as f64 / 1000.0)
    } else {
        "-".into()
    };
    let width = 30;
    let filled = (done * width)
        .checked_div(p.total)
        .unwrap_or(width)
        .min(width);
    format!(
        "[{}{}] {done}/{} done  passed {}  failed {}  did not participate {}  acting {}  waiting {}  elapsed {:.1}s  ETA {eta}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        p.total,
        p.passed,
        p.failed,
        p.did_not_participate,
        p.acting,
        p.waiting,
        elapsed_ms as f64 / 1000.0
    )
}

/// Follows the newest campaign until it ends (or Ctrl-C). Returns its last
/// progress and whether it ended.
pub async fn follow(client: &Client) -> Result<(Progress, bool), ClientError> {
    let live = std::io::stderr().is_terminal();
    let mut last_print = std::time::Instant::now();
    loop {
        let progress: Option<Progress> = client.get("/api/campaigns/current").await?;
        let Some(progress) = progress else {
            return Err(ClientError::Refused("no campaign has run yet".into()));
        };
        if live {
            eprint!("\r\x1b[2K{}", progress_line(&progress));
            let _ = std::io::stderr().flush();
        } else if progress.is_over() || last_print.elapsed() > Duration::from_secs(10) {
            eprintln!("{}", progress_line(&progress));
            last_print = std::time::Instant::now();
        }
        if progress.is_over() {
            if live {
                eprintln!();
            }
            return Ok((progress, true));
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                if live {
                    eprintln!();
                }
                eprintln!("detached: the campaign goes on in the parent; follow it again with `fleetls-parent campaign`");
                return Ok((progress, false));
            }
            _ = tokio::time::sleep(Duration::from_millis(if live { 250 } else { 500 })) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_and_estimates() {
        let p = Progress {
            total: 10,
            passed: 4,
            failed: 1,
            acting: 2,
            waiting: 3,
            started_at: 1_000,
            finished_at: Some(6_000),
            state: crate::campaign::CampaignState::Running,
            ..Progress::default()
        };
        let line = progress_line(&p);
        assert!(line.contains("5/10 done"), "{line}");
        assert!(
            line.contains("acting 2") && line.contains("waiting 3"),
            "{line}"
        );
        assert!(line.contains("ETA 5s"), "{line}");
    }
}
