//! The report as plain text for a terminal.

use crate::report::DoctorReport;

/// Plain text for a terminal: one line per check, what to do under each
/// failed one, then the chain the server presented.
pub fn render(report: &DoctorReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = write!(out, "doctor {}", report.target);
    match (&report.address, &report.protocol) {
        (Some(address), Some(protocol)) => {
            let _ = write!(out, " ({address}, {protocol})");
        }
        (Some(address), None) => {
            let _ = write!(out, " ({address})");
        }
        _ => {}
    }
    out.push('\n');
    for check in &report.checks {
        let state = if check.ok { "ok" } else { "FAILED" };
        let _ = writeln!(out, "  {state:<7}{:<19}{}", check.name, check.detail);
        if let Some(problem) = check.problem {
            let _ = writeln!(out, "  {:<26}problem: {}", "", problem.as_str());
        }
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "  {:<26}what to do: {fix}", "");
        }
    }
    if !report.server_chain.is_empty() {
        out.push_str("The server presented:\n");
        for (i, cert) in report.server_chain.iter().enumerate() {
            let _ = writeln!(out, "  {i}: \"{}\"", cert.subject);
            let _ = writeln!(out, "     issued by \"{}\"", cert.issuer);
            let _ = writeln!(
                out,
                "     valid from {} to {}",
                cert.not_before, cert.not_after
            );
            if !cert.names.is_empty() {
                let _ = writeln!(out, "     names: {}", cert.names.join(", "));
            }
            let _ = writeln!(out, "     {}", cert.fingerprint);
        }
    }
    let problems = report.problems();
    if problems.is_empty() {
        out.push_str("Result: no problem found.\n");
    } else {
        let names: Vec<&str> = problems.iter().map(|p| p.as_str()).collect();
        let _ = writeln!(
            out,
            "Result: {} problem(s): {}.",
            problems.len(),
            names.join(", ")
        );
    }
    out
}
