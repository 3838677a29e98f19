//! What the runner tells a supervisor about how to run, on its command line: the containment of
//! an unjailed tree, the process it must die with, where it records its tree, whether it outlives
//! agentd, and a standby's jail shape. The runner encodes them here ([`Settings::to_args`]) and
//! the supervisor parses them back here ([`Settings::parse`]), so the two sides cannot drift.
//!
//! `<exe> __supervise [settings] -- <program> <args...>` and `<exe> __supervise-standby [settings]`.
//! The supervisor takes no setting from its environment, which is the agent's. The one thing it
//! does read there is the run marker (`AGENTD_RUN_TOKEN`, [`crate::runner::records`]): not a
//! setting but the mark every process of the tree inherits and the sweeps find them by.

use super::super::jail::Shape;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

/// How a supervisor contains a tree that runs without a jail (a jail brings its own namespaces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Containment {
    /// A PID namespace of the tree's own, whose end takes every process in it along; where the
    /// kernel refuses one (an unprivileged container), the subreaper.
    #[default]
    PidNamespace,
    /// The subreaper only: the supervisor adopts the tree's orphans and kills them by scanning
    /// `/proc`. What runs where namespaces are unavailable; chosen explicitly to test that mode.
    Subreaper,
}

impl Containment {
    fn arg(self) -> &'static str {
        match self {
            Containment::PidNamespace => "pid-namespace",
            Containment::Subreaper => "subreaper",
        }
    }

    fn from_arg(arg: &str) -> Option<Containment> {
        [Containment::PidNamespace, Containment::Subreaper]
            .into_iter()
            .find(|c| c.arg() == arg)
    }
}

impl std::fmt::Display for Containment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.arg())
    }
}

/// An adoptable supervisor's bounds (issue #23, [`super::spool`]): it outlives agentd, journals at
/// most `max_journal_bytes`, and kills its tree when nobody adopted it within `timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adoption {
    pub max_journal_bytes: u64,
    pub timeout_secs: u64,
}

/// Everything a supervisor is told about how to run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub containment: Containment,
    /// The pid of the process that started it: the supervisor arms `PR_SET_PDEATHSIG` itself and
    /// then exits unless that process is still its parent, so an agentd that died between the
    /// spawn and the prctl is noticed. `None` (the supervisor run by hand) only arms the signal.
    pub parent: Option<i32>,
    /// Where it records its tree ([`crate::runner::records`]); `None` records nothing.
    pub run_dir: Option<PathBuf>,
    /// Set when the supervisor outlives agentd; needs `run_dir`.
    pub adopt: Option<Adoption>,
    /// A standby's jail: the job then runs in a jail of this shape ([`super::jailed`]).
    pub jail: Option<Shape>,
}

const CONTAINMENT: &str = "--containment";
const PARENT: &str = "--parent";
const RUN_DIR: &str = "--run-dir";
const ADOPT: &str = "--adopt";
/// The standby argument that carries the jail's [`Shape`] as JSON.
pub const JAIL: &str = "--jail";
/// Ends the settings; the program and its arguments follow.
const END: &str = "--";

impl Settings {
    /// The settings as arguments, without the closing `--`.
    pub fn to_args(&self) -> Result<Vec<OsString>, String> {
        let mut out: Vec<OsString> = Vec::new();
        if self.containment != Containment::default() {
            out.extend([CONTAINMENT.into(), self.containment.arg().into()]);
        }
        if let Some(pid) = self.parent {
            out.extend([PARENT.into(), pid.to_string().into()]);
        }
        if let Some(dir) = &self.run_dir {
            out.extend([RUN_DIR.into(), dir.clone().into_os_string()]);
        }
        if let Some(a) = self.adopt {
            let value = format!("{}:{}", a.max_journal_bytes, a.timeout_secs);
            out.extend([ADOPT.into(), value.into()]);
        }
        if let Some(shape) = &self.jail {
            let json = serde_json::to_string(shape)
                .map_err(|e| format!("cannot encode a jail shape: {e}"))?;
            out.extend([JAIL.into(), json.into()]);
        }
        Ok(out)
    }

    /// Reads settings from the front of `args` up to a `--` (consumed) or the first argument that
    /// is not a setting; returns them and the rest. A bare `<program> <args...>` has no settings.
    pub fn parse(args: &[OsString]) -> Result<(Settings, &[OsString]), String> {
        let mut settings = Settings::default();
        let mut rest = args;
        while let [flag, tail @ ..] = rest {
            if flag == END {
                return Ok((settings, tail));
            }
            let Some(flag) = flag.to_str().filter(|f| f.starts_with("--")) else {
                break;
            };
            let [value, tail @ ..] = tail else {
                return Err(format!("{flag} needs a value"));
            };
            settings.set(flag, value)?;
            rest = tail;
        }
        Ok((settings, rest))
    }

    fn set(&mut self, flag: &str, value: &OsStr) -> Result<(), String> {
        let text = || {
            value
                .to_str()
                .ok_or_else(|| format!("{flag} must be UTF-8"))
        };
        match flag {
            CONTAINMENT => {
                self.containment = Containment::from_arg(text()?)
                    .ok_or_else(|| format!("{flag} must be pid-namespace or subreaper"))?;
            }
            PARENT => {
                let pid = text()?.parse().ok().filter(|&p: &i32| p > 0);
                self.parent = Some(pid.ok_or_else(|| format!("{flag} must be a pid"))?);
            }
            RUN_DIR => self.run_dir = Some(PathBuf::from(value)),
            ADOPT => {
                let adopt = text()?
                    .split_once(':')
                    .and_then(|(m, t)| {
                        Some(Adoption {
                            max_journal_bytes: m.parse().ok()?,
                            timeout_secs: t.parse().ok()?,
                        })
                    })
                    .ok_or_else(|| format!("{flag} must be <bytes>:<seconds>"))?;
                self.adopt = Some(adopt);
            }
            JAIL => {
                let shape =
                    serde_json::from_str(text()?).map_err(|e| format!("bad jail shape: {e}"))?;
                self.jail = Some(shape);
            }
            _ => return Err(format!("unknown setting {flag}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn settings_survive_the_round_trip_through_arguments() {
        let settings = Settings {
            containment: Containment::Subreaper,
            parent: Some(42),
            run_dir: Some(PathBuf::from("/var/lib/agentd/runs")),
            adopt: Some(Adoption {
                max_journal_bytes: 1 << 20,
                timeout_secs: 600,
            }),
            jail: None,
        };
        let mut encoded = settings.to_args().unwrap();
        encoded.extend(args(&["--", "sh", "-c", "echo --parent"]));
        let (parsed, rest) = Settings::parse(&encoded).unwrap();
        assert_eq!(parsed, settings);
        assert_eq!(rest, args(&["sh", "-c", "echo --parent"]));
    }

    #[test]
    fn a_bare_program_has_the_default_settings() {
        let given = args(&["sh", "-c", "true"]);
        let (parsed, rest) = Settings::parse(&given).unwrap();
        assert_eq!(parsed, Settings::default());
        assert_eq!(parsed.containment, Containment::PidNamespace);
        assert_eq!(rest, &given[..]);
    }

    #[test]
    fn a_bad_setting_is_refused_with_its_name() {
        for (given, names) in [
            (args(&["--containment", "chroot"]), "--containment"),
            (args(&["--parent", "-3"]), "--parent"),
            (args(&["--adopt", "10"]), "--adopt"),
            (args(&["--run-dir"]), "--run-dir"),
            (args(&["--frobnicate", "1"]), "--frobnicate"),
        ] {
            let err = Settings::parse(&given).unwrap_err();
            assert!(err.contains(names), "{given:?}: {err}");
        }
    }
}
