//! The seccomp profile containers run with: a runtime's profile (runc, podman, CRI-O) with
//! the calls the daemon answers set to `SCMP_ACT_NOTIFY` and `listenerPath` pointing at the
//! daemon's socket (`cgprocfs seccomp-profile`).

use serde_json::{json, Value};
use std::path::Path;

/// Why a profile cannot be extended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base profile is not a JSON object.
    #[error("the profile is not a JSON object")]
    NotAnObject,
}

/// The calls notified to the daemon: `sysinfo`, and `sched_getaffinity` with `affinity`.
pub fn notified(affinity: bool) -> Vec<&'static str> {
    let mut names = vec!["sysinfo"];
    if affinity {
        names.push("sched_getaffinity");
    }
    names
}

/// `base` (`None`: allow everything) with the [`notified`] calls set to `SCMP_ACT_NOTIFY` and
/// `listenerPath` set to `listener`. Those calls are removed from every other rule first: a
/// profile cannot give one call two actions.
pub fn extend(base: Option<Value>, listener: &Path, affinity: bool) -> Result<Value, Error> {
    let mut p = base.unwrap_or_else(|| json!({"defaultAction": "SCMP_ACT_ALLOW"}));
    let names = notified(affinity);
    let obj = p.as_object_mut().ok_or(Error::NotAnObject)?;
    let mut rules: Vec<Value> = obj.get("syscalls").and_then(Value::as_array).cloned().unwrap_or_default();
    for r in &mut rules {
        if let Some(list) = r.get_mut("names").and_then(Value::as_array_mut) {
            list.retain(|n| !n.as_str().is_some_and(|n| names.contains(&n)));
        }
    }
    rules.retain(|r| r.get("names").and_then(Value::as_array).is_none_or(|l| !l.is_empty()));
    rules.push(json!({"names": names, "action": "SCMP_ACT_NOTIFY"}));
    obj.insert("syscalls".into(), Value::Array(rules));
    obj.insert("listenerPath".into(), json!(listener));
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notified_calls_leave_every_other_rule() {
        let base = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "sysinfo"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["sched_getaffinity"], "action": "SCMP_ACT_ALLOW"},
        ]});
        let p = extend(Some(base), Path::new("/run/s.sock"), true).unwrap();
        assert_eq!(p["listenerPath"], "/run/s.sock");
        let rules = p["syscalls"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "the emptied rule is dropped: {rules:?}");
        assert_eq!(rules[0]["names"], json!(["read"]));
        assert_eq!(rules[1], json!({"names": ["sysinfo", "sched_getaffinity"], "action": "SCMP_ACT_NOTIFY"}));
        assert!(matches!(extend(Some(json!([1])), Path::new("/s"), false), Err(Error::NotAnObject)));
        assert_eq!(extend(None, Path::new("/s"), false).unwrap()["defaultAction"], "SCMP_ACT_ALLOW");
    }
}
