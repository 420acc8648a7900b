//! The guest's CPU across nodes (DESIGN §7, "the destination CPU offers
//! every CPU flag the VM uses").
//!
//! A VM's CPU model is a name (`qemu64`, `Nehalem`, `max`), and what a
//! name means depends on the QEMU and the accelerator: `max` on QEMU 10
//! under TCG has `sha-ni`, on QEMU 7.2 it has `pcommit` instead; `host`
//! under KVM is whatever the host's CPU is. So a migration never sends the
//! name. The source asks its running QEMU for the guest's CPU in QEMU's
//! *static expansion* (model `base` plus every property: each flag on or
//! off, vendor, family, model id), a [`GuestCpu`]. The destination names
//! every flag that is on and that its own QEMU cannot offer under its
//! accelerator (its `max`), then starts a QEMU with exactly that CPU under
//! `enforce` and the VM's machine type to be sure; and the incoming QEMU
//! is started with exactly that CPU, so the guest's CPU does not change
//! under it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::{Error, Jname, Result, Workdir};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{qemu, qmp_failed, VmError};

/// How long a probing QEMU may take to answer.
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// QEMU's answer to `query-cpu-model-expansion`.
#[derive(Debug, Deserialize)]
struct Expansion {
    model: ExpandedModel,
}

#[derive(Debug, Deserialize)]
struct ExpandedModel {
    name: String,
    props: Option<BTreeMap<String, Value>>,
}

/// A guest CPU as QEMU's static expansion gives it: the properties of
/// model `base`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GuestCpu(pub BTreeMap<String, Value>);

impl GuestCpu {
    /// From a `query-cpu-model-expansion` answer (or its `model`).
    fn from_expansion(v: &Value) -> Result<GuestCpu> {
        let model = serde_json::from_value::<Expansion>(v.clone())
            .map(|e| e.model)
            .or_else(|_| serde_json::from_value::<ExpandedModel>(v.clone()))
            .map_err(|e| Error::Failed(format!("QEMU's CPU expansion does not read: {e}: {v}")))?;
        if model.name != "base" {
            return Err(Error::Failed(format!(
                "QEMU's static CPU expansion is not of model base: {v}"
            )));
        }
        let props = model
            .props
            .ok_or_else(|| Error::Failed(format!("QEMU's CPU expansion has no props: {v}")))?;
        Ok(GuestCpu(props))
    }

    /// The flags it has on.
    pub fn flags(&self) -> BTreeSet<&str> {
        self.0
            .iter()
            .filter(|(_, v)| **v == Value::Bool(true))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The `-cpu` argument for exactly this CPU, every flag enforced. Model
    /// `base` has every flag off, so only the flags that are on are named:
    /// another QEMU need not know the names of flags it has never had. It
    /// came from another node: every name and value is checked, and commas
    /// in values are doubled as QEMU's option syntax wants.
    pub fn arg(&self) -> Result<String> {
        let mut s = String::from("base");
        for (k, v) in &self.0 {
            if *v == Value::Bool(false) {
                continue;
            }
            let name_ok = !k.is_empty()
                && k.len() <= 64
                && k.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            if !name_ok {
                return Err(Error::bad_value(
                    "cpu property",
                    k,
                    "not a CPU property name",
                ));
            }
            let value = match v {
                Value::Bool(_) => "on".to_owned(),
                Value::Number(n) => n.to_string(),
                Value::String(t) if t.len() <= 128 && !t.chars().any(char::is_control) => {
                    t.replace(',', ",,")
                }
                other => {
                    return Err(Error::bad_value(
                        "cpu property",
                        &format!("{k}={other}"),
                        "not a CPU property value",
                    ))
                }
            };
            s.push(',');
            s.push_str(k);
            s.push('=');
            s.push_str(&value);
        }
        s.push_str(",enforce");
        Ok(s)
    }
}

/// The CPU of the VM `j` running here: the CPU its QEMU was started with
/// when it came by migration, else its model as this QEMU expands it.
pub fn of_running(wd: &Workdir, j: &Jname) -> Result<GuestCpu> {
    if let Some(cpu) = ferry_core::runtime::read(wd, j)?.and_then(|rt| rt.cpu) {
        return Ok(GuestCpu(cpu));
    }
    let cfg = crate::load(wd, j)?;
    let mut q = crate::qmp::Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(5))
        .map_err(|e| qmp_failed(j, e))?;
    let v = q
        .execute(
            "query-cpu-model-expansion",
            Some(json!({"type": "static", "model": {"name": cfg.args.vm_cpu_model.0}})),
        )
        .map_err(|e| qmp_failed(j, e))?;
    GuestCpu::from_expansion(&v)
}

/// Whether this node can run `cpu` with `machine` under `accel`. The
/// refusal names each flag this node's QEMU cannot offer, or else says
/// what QEMU said when started with that CPU and machine.
pub fn runs_here(wd: &Workdir, machine: &str, accel: &str, cpu: &GuestCpu) -> Result<()> {
    let bin = qemu::binary(wd)?;
    let max = probe(
        &bin,
        &["-machine", "none", "-accel", accel],
        &[(
            "query-cpu-model-expansion",
            json!({"type": "static", "model": {"name": "max"}}),
        )],
    )
    .map_err(|source| VmError::Probe {
        what: format!("cannot ask {bin} for its CPU flags"),
        source,
    })?;
    let offered = GuestCpu::from_expansion(&max[0])?;
    let offered = offered.flags();
    let missing: Vec<&str> = cpu.flags().difference(&offered).copied().collect();
    if !missing.is_empty() {
        return Err(Error::Refused(format!(
            "the VM's CPU uses flags that {bin} under {accel} cannot offer here: {}",
            missing.join(", ")
        )));
    }
    let arg = cpu.arg()?;
    probe(
        &bin,
        &[
            "-machine", machine, "-accel", accel, "-cpu", &arg, "-m", "16M", "-S",
        ],
        &[("query-status", json!({}))],
    )
    .map(drop)
    .map_err(|source| {
        VmError::ProbeRefused {
            what: format!(
                "{bin} cannot start machine {machine} with the VM's CPU under {accel} here"
            ),
            source,
        }
        .into()
    })
}

/// One line of a probing QEMU's QMP output.
#[derive(Debug, Deserialize)]
struct Answer {
    id: Option<usize>,
    #[serde(rename = "return")]
    answer: Option<Value>,
    error: Option<QmpErrorReply>,
}

#[derive(Debug, Deserialize)]
struct QmpErrorReply {
    desc: String,
}

/// Why a probing QEMU gave no answer to a command.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {bin}")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU's own words (its error reply, or what it wrote to stderr).
    #[error("{0}")]
    Said(String),
    #[error("no answer within {0}s")]
    TimedOut(u64),
    #[error("it exited without answering")]
    Silent,
}

/// Start a QEMU with `args`, run `commands` over QMP on its stdin, and
/// quit it: the `return` of each command, or what went wrong (QEMU's own
/// words when it would not start).
fn probe(
    bin: &str,
    args: &[&str],
    commands: &[(&str, Value)],
) -> std::result::Result<Vec<Value>, ProbeError> {
    let mut child = Command::new(bin)
        .args(args)
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ProbeError::Spawn {
            bin: bin.to_owned(),
            source,
        })?;
    if let Some(mut input) = child.stdin.take() {
        let mut text = format!("{}\n", json!({"execute": "qmp_capabilities"}));
        for (i, (cmd, arguments)) in commands.iter().enumerate() {
            text.push_str(&format!(
                "{}\n",
                json!({"execute": cmd, "arguments": arguments, "id": i})
            ));
        }
        text.push_str(&format!("{}\n", json!({"execute": "quit"})));
        // QEMU that failed at once has closed its end: its stderr says why.
        let _ = input.write_all(text.as_bytes());
    }
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let until = Instant::now() + PROBE_LIMIT;
    let mut timed_out = false;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() >= until {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let stdout = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let mut answers: Vec<Option<std::result::Result<Value, ProbeError>>> =
        (0..commands.len()).map(|_| None).collect();
    for line in stdout.lines() {
        // QMP's lines: the greeting, events, and the answers to ours by id.
        let Ok(Answer {
            id: Some(i),
            answer,
            error,
        }) = serde_json::from_str::<Answer>(line)
        else {
            continue;
        };
        if let Some(slot) = answers.get_mut(i) {
            *slot = Some(match (answer, error) {
                (Some(r), _) => Ok(r),
                (None, e) => Err(ProbeError::Said(
                    e.map_or_else(|| "no answer".to_owned(), |e| e.desc),
                )),
            });
        }
    }
    let said: Vec<&str> = err
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    answers
        .into_iter()
        .map(|a| match a {
            Some(r) => r,
            None if timed_out => Err(ProbeError::TimedOut(PROBE_LIMIT.as_secs())),
            None if said.is_empty() => Err(ProbeError::Silent),
            None => Err(ProbeError::Said(said.join("; "))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(pairs: &[(&str, Value)]) -> GuestCpu {
        GuestCpu(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn arg_spells_every_property_and_escapes_commas() {
        let c = cpu(&[
            ("sse2", json!(true)),
            ("avx", json!(false)),
            ("family", json!(15)),
            ("model-id", json!("QEMU, Virtual CPU")),
        ]);
        assert_eq!(
            c.arg().unwrap(),
            "base,family=15,model-id=QEMU,, Virtual CPU,sse2=on,enforce"
        );
        assert_eq!(c.flags().into_iter().collect::<Vec<_>>(), ["sse2"]);
    }

    #[test]
    fn arg_refuses_what_no_qemu_sends() {
        for (k, v) in [
            ("sse2,x=on", json!(true)),
            ("", json!(true)),
            ("SSE2", json!(true)),
            ("model-id", json!("a\nb")),
            ("model-id", json!(["x"])),
            ("family", json!(null)),
        ] {
            assert!(cpu(&[(k, v.clone())]).arg().is_err(), "{k}={v}");
        }
    }

    #[test]
    fn expansion_must_be_of_base() {
        let ok = json!({"model": {"name": "base", "props": {"sse2": true}}});
        assert_eq!(GuestCpu::from_expansion(&ok).unwrap().flags().len(), 1);
        let bad = json!({"model": {"name": "max", "props": {}}});
        assert!(GuestCpu::from_expansion(&bad).is_err());
    }
}
