//! The verdict: from what happened while a job ran to its outcome. Pure, so every precedence
//! rule (a spent budget over a cancel, a cancel over a jail limit, a limit over the exit code)
//! is a unit test.

use crate::domain::{ExitStatus, Outcome};
use crate::runner::StopCause;
use crate::runner::jail::Notice;
use std::time::Duration;

/// What happened to a job's agent, as the pump and the runner saw it.
pub(super) struct Ended<'a> {
    /// Why agentd stopped the agent, if it did.
    pub stop: Option<StopCause>,
    pub exit: ExitStatus,
    /// A jail limit that ended the job.
    pub limit_hit: Option<Notice>,
    /// The gateway's message when the job's budget was spent.
    pub budget_hit: Option<String>,
    /// The reason given with a cancel (CancelJob, a deleted session, a spent budget).
    pub cancel_reason: Option<String>,
    pub timeout: Duration,
    /// The agent's own error, from its output.
    pub agent_error: Option<String>,
    pub stderr_tail: &'a [String],
    /// InterruptJob reached the agent (issue #17).
    pub interrupted: bool,
}

pub(super) fn verdict(e: Ended<'_>) -> Outcome {
    if let Some(message) = e.budget_hit {
        return Outcome::BudgetExceeded { message };
    }
    match (e.stop, e.limit_hit) {
        (Some(StopCause::Cancelled), _) => Outcome::Cancelled {
            reason: e.cancel_reason.unwrap_or_else(|| "cancelled".into()),
        },
        (Some(StopCause::TimedOut), _) => Outcome::TimedOut { after: e.timeout },
        (None, Some(hit)) => Outcome::LimitExceeded {
            limit: hit.limit,
            message: hit.message,
        },
        // The interrupted turn ends as the agent words it (often an error): the caller asked.
        (None, None) if e.interrupted => Outcome::Interrupted,
        (None, None) if e.exit.success() && e.agent_error.is_none() => Outcome::Succeeded,
        (None, None) => Outcome::Failed {
            message: e
                .agent_error
                .or_else(|| (!e.stderr_tail.is_empty()).then(|| e.stderr_tail.join("\n")))
                .map(|m| format!("agent failed ({}): {m}", e.exit))
                .unwrap_or_else(|| format!("agent exited with {}", e.exit)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(exit: ExitStatus) -> Ended<'static> {
        Ended {
            stop: None,
            exit,
            limit_hit: None,
            budget_hit: None,
            cancel_reason: None,
            timeout: Duration::from_secs(60),
            agent_error: None,
            stderr_tail: &[],
            interrupted: false,
        }
    }

    fn notice() -> Notice {
        Notice {
            limit: "memory".into(),
            message: "process 7 (python3) killed".into(),
            fatal: true,
        }
    }

    #[test]
    fn a_clean_exit_without_an_agent_error_succeeds() {
        assert_eq!(verdict(ended(ExitStatus::Code(0))), Outcome::Succeeded);
    }

    #[test]
    fn failures_explain_themselves_from_the_agent_then_stderr_then_the_exit() {
        let mut e = ended(ExitStatus::Code(0));
        e.agent_error = Some("rate limited".into());
        assert_eq!(
            verdict(e),
            Outcome::Failed {
                message: "agent failed (exit code 0): rate limited".into()
            }
        );
        let tail = ["a".to_owned(), "b".to_owned()];
        let mut e = ended(ExitStatus::Code(2));
        e.stderr_tail = &tail;
        let Outcome::Failed { message } = verdict(e) else {
            panic!("not failed")
        };
        assert!(message.ends_with(": a\nb"), "{message}");
        let Outcome::Failed { message } = verdict(ended(ExitStatus::Signal(9))) else {
            panic!("not failed")
        };
        assert!(message.starts_with("agent exited with"), "{message}");
    }

    #[test]
    fn precedence_budget_then_stop_then_limit() {
        let mut e = ended(ExitStatus::Signal(9));
        e.stop = Some(StopCause::Cancelled);
        e.limit_hit = Some(notice());
        e.budget_hit = Some("spent".into());
        assert_eq!(
            verdict(e),
            Outcome::BudgetExceeded {
                message: "spent".into()
            }
        );
        let mut e = ended(ExitStatus::Signal(9));
        e.stop = Some(StopCause::Cancelled);
        e.limit_hit = Some(notice());
        assert_eq!(
            verdict(e),
            Outcome::Cancelled {
                reason: "cancelled".into()
            }
        );
        let mut e = ended(ExitStatus::Signal(9));
        e.stop = Some(StopCause::TimedOut);
        assert_eq!(
            verdict(e),
            Outcome::TimedOut {
                after: Duration::from_secs(60)
            }
        );
        let mut e = ended(ExitStatus::Signal(9));
        e.limit_hit = Some(notice());
        assert!(matches!(verdict(e), Outcome::LimitExceeded { limit, .. } if limit == "memory"));
    }
}
