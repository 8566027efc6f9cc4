//! Running a job's scripts (pre/post cutover, mirror start/complete/stop) with a timeout,
//! keeping the end of their output for the job log.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use understudy_core::effect::ScriptResult;
use understudy_core::spec::Script;

/// How much of a script's output is kept (the end of it).
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// Runs `script` to completion or its timeout; never fails: a script that cannot start says so
/// in its result.
pub async fn run_script(script: &Script) -> ScriptResult {
    let mut command = Command::new(&script.path);
    command
        .args(&script.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return ScriptResult {
                failed_to_start: true,
                output: format!("cannot run {}: {error}", script.path),
                ..ScriptResult::default()
            };
        }
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Read both streams while waiting, so a chatty script cannot block on a full pipe.
    let collect = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(Duration::from_secs(script.timeout_secs), collect).await {
        Ok((status, out, err)) => {
            let mut output = out;
            output.extend_from_slice(&err);
            ScriptResult {
                exit_code: status.ok().and_then(|s| s.code()),
                timed_out: false,
                output: tail(&output),
                failed_to_start: false,
            }
        }
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => ScriptResult {
            timed_out: true,
            output: format!("stopped after {} s", script.timeout_secs),
            ..ScriptResult::default()
        },
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(path: &str, args: &[&str], timeout_secs: u64) -> Script {
        Script {
            path: path.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            delay_until_complete: true,
            timeout_secs,
        }
    }

    #[tokio::test]
    async fn output_and_exit_code_are_kept() {
        let result =
            run_script(&script("/bin/sh", &["-c", "echo hello; echo oops >&2; exit 3"], 5)).await;
        assert_eq!(result.exit_code, Some(3));
        assert!(result.output.contains("hello") && result.output.contains("oops"), "{result:?}");
    }

    #[tokio::test]
    async fn a_script_that_runs_too_long_is_stopped() {
        let result = run_script(&script("/bin/sleep", &["30"], 1)).await;
        assert!(result.timed_out);
    }

    #[tokio::test]
    async fn a_missing_script_is_reported_not_fatal() {
        let result = run_script(&script("/nonexistent/hook", &[], 1)).await;
        assert!(result.failed_to_start);
        assert!(result.output.contains("/nonexistent/hook"));
    }
}
