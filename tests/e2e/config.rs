//! `serve` refuses a bad config before doing anything, naming file, line and
//! what was expected, with a non-zero exit.

use std::process::Command;
use std::time::Duration;

use crate::harness::clients::run_bounded;
use crate::harness::stderr;

fn serve(config: &str) -> (bool, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    let data_dir = dir.path().join("data");
    std::fs::write(&path, config.replace("DATA", &data_dir.display().to_string())).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("serve").arg("-c").arg(&path);
    let out = run_bounded(&mut cmd, Duration::from_secs(30));
    (out.status.success(), stderr(&out), data_dir)
}

const BASE: &str = "data_dir: DATA\n\
api: { listen: 127.0.0.1:0 }\n\
postgres: { listen: 127.0.0.1:0 }\n\
resources:\n\
\x20 - name: orders\n\
\x20   kind: postgres\n\
\x20   host: 127.0.0.1\n\
\x20   port: 5432\n\
\x20   database: orders\n\
\x20   roles:\n\
\x20     read: { user: orders_ro }\n\
\x20   policy:\n\
\x20     max_duration: 4h\n";

#[test]
fn unknown_key_and_bad_value_name_file_and_line() {
    for (bad, line, says) in [
        (
            BASE.replace("    database: orders\n", "    database: orders\n    colour: blue\n"),
            10,
            "unknown field `colour`",
        ),
        (
            BASE.replace("max_duration: 4h", "max_duration: soon"),
            13,
            "expected e.g. 90s",
        ),
        (
            BASE.replace("listen: 127.0.0.1:0 }\nresources", "listen: nowhere }\nresources"),
            3,
            "postgres",
        ),
    ] {
        let (ok, err, data_dir) = serve(&bad);
        assert!(!ok, "serve must refuse:\n{bad}");
        assert!(
            err.contains(&format!("bad.yaml:{line}:")),
            "file and line {line}: {err}"
        );
        assert!(err.contains(says), "should say {says:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!data_dir.exists(), "nothing may be created from a bad config");
    }
}
