//! A 100 MB file of random bytes through the SSH gateway, intact: `scp` in
//! SFTP mode and in legacy (`-O`) mode both ways, and `sftp`, compared by SHA-256.
//! Each copy is deleted once checked, so the test never holds more than three
//! copies on disk.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::harness::sshd::{SshSetup, Sshd, scp, sftp_batch};
use crate::harness::{GatewayOptions, stderr, stdout};

const SIZE: usize = 100 * 1024 * 1024;

/// The file's SHA-256, read in pieces; the file must be whole-length.
fn sha256(path: &Path) -> String {
    let fail = |e: std::io::Error| -> ! { panic!("read {}: {e}", path.display()) };
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| fail(e));
    let (mut hasher, mut buf, mut total) = (Sha256::new(), vec![0; 1 << 20], 0);
    loop {
        match file.read(&mut buf).unwrap_or_else(|e| fail(e)) {
            0 => break,
            n => {
                hasher.update(&buf[..n]);
                total += n;
            }
        }
    }
    assert_eq!(total, SIZE, "{} has the wrong length", path.display());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes a copy, then deletes it.
fn sha256_and_remove(path: &Path) -> String {
    let sum = sha256(path);
    let _ = std::fs::remove_file(path);
    sum
}

/// 100 MB from the kernel's random source: no pattern a bug could preserve.
fn random_file(path: &Path) {
    let mut random = std::fs::File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = std::fs::File::create(path).expect("create");
    let copied = std::io::copy(&mut (&mut random).take(SIZE as u64), &mut out).expect("copy");
    assert_eq!(copied as usize, SIZE);
    out.flush().expect("flush");
}

#[test]
fn a_100_mb_file_survives_scp_both_modes_and_sftp() {
    let s = SshSetup::start(Sshd::start(), GatewayOptions::default());
    let (gw, key) = (&s.gw, &s.alice_key);
    gw.grant(&s.alice, &s.carol, "web1", None, "30m");

    let local = tempfile::tempdir().expect("tempdir");
    let far = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("big.bin");
    random_file(&src);
    let want = sha256(&src);
    let remote = |name: &str| format!("alice+web1@127.0.0.1:{}", far.path().join(name).display());

    for (mode, extra) in [("sftp", None), ("legacy", Some("-O"))] {
        let up = format!("up-{mode}.bin");
        let down = local.path().join(format!("down-{mode}.bin"));
        let mut args: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        args.extend([src.display().to_string(), remote(&up)]);
        let out = scp(gw.ssh_port, key, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "scp {mode} upload: {}", stderr(&out));
        assert_eq!(
            sha256(&far.path().join(&up)),
            want,
            "scp {mode} upload changed the file"
        );

        let mut args: Vec<String> = extra.into_iter().map(str::to_owned).collect();
        args.extend([remote(&up), down.display().to_string()]);
        let out = scp(gw.ssh_port, key, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "scp {mode} download: {}", stderr(&out));
        assert_eq!(sha256_and_remove(&down), want, "scp {mode} download changed the file");
        let _ = std::fs::remove_file(far.path().join(&up));
    }

    let back = local.path().join("back.bin");
    let batch = local.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "cd {far}\nput {src} sftp.bin\nget sftp.bin {back}\n",
            far = far.path().display(),
            src = src.display(),
            back = back.display()
        ),
    )
    .expect("batch");
    let out = sftp_batch(gw.ssh_port, key, "alice+web1", &batch);
    assert!(out.status.success(), "sftp -b: {}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        sha256_and_remove(&far.path().join("sftp.bin")),
        want,
        "sftp put changed the file"
    );
    assert_eq!(sha256_and_remove(&back), want, "sftp get changed the file");
}
