//! One session channel bridged to one upstream channel. Two pumps, one per
//! direction, so a full window one way never stalls the other: the engineer's
//! requests, data, EOF, window changes and signals go up; data, stderr, EOF,
//! exit status and exit signal come down. A refused session answers its
//! first command with the reason on stderr and exit status 1; a cut session
//! gets the cut line on stderr, exit status 1, and the channel closes.
//! Each channel's commands, sftp operations and pty output are handed to its
//! `ChannelAudit` on the way through; it keeps headers, never payloads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client};
use tokio::sync::{broadcast, watch};
use tokio_util::task::AbortOnDropHandle;

use super::channel_audit::ChannelAudit;
use super::conn::Conn;
use super::refusal::Refusal;

/// SSH's extended-data code for stderr.
const STDERR: u32 = 1;
/// Exit status of a refused or cut session.
const REFUSED_STATUS: u32 = 1;

/// Bridges `channel` until either side closes it or the session is cut.
pub async fn run(conn: Arc<Conn>, channel: Channel<Msg>, server: Handle) {
    let (from_client, to_client) = channel.split();
    let upstream = match conn.upstream().await {
        Ok(up) => up.channel_open_session().await.map_err(|e| Refusal::Upstream {
            resource: conn
                .admission
                .as_ref()
                .map(|a| a.resource.name.clone())
                .unwrap_or_default(),
            detail: format!("cannot open a channel: {e}"),
        }),
        Err(refusal) => Err(refusal),
    };
    match upstream {
        Ok(up) => relay(conn, from_client, to_client, up, server).await,
        Err(refusal) => refuse(from_client, to_client, &refusal).await,
    }
}

/// Waits for the command the client wants run, then answers it with the refusal.
async fn refuse(mut from_client: ChannelReadHalf, to_client: ChannelWriteHalf<Msg>, refusal: &Refusal) {
    while let Some(msg) = from_client.wait().await {
        match msg {
            ChannelMsg::Exec { .. } | ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. } => break,
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => {}
        }
    }
    let _ = to_client.extended_data_bytes(STDERR, line(&refusal.text())).await;
    end(&to_client).await;
}

/// `portcullis: TEXT` on a line of its own, even after a prompt or in raw pty mode.
fn line(text: &str) -> Bytes {
    Bytes::from(format!("\r\nportcullis: {text}\r\n"))
}

/// Exit status 1, EOF, close.
async fn end(to_client: &ChannelWriteHalf<Msg>) {
    let _ = to_client.exit_status(REFUSED_STATUS).await;
    let _ = to_client.eof().await;
    let _ = to_client.close().await;
}

async fn relay(
    conn: Arc<Conn>,
    from_client: ChannelReadHalf,
    to_client: ChannelWriteHalf<Msg>,
    upstream: Channel<client::Msg>,
    server: Handle,
) {
    let (from_up, to_up) = upstream.split();
    let to_up = Arc::new(to_up);
    let audit = Arc::new(ChannelAudit::new(Arc::clone(&conn)));
    let up = AbortOnDropHandle::new(tokio::spawn(pump_up(
        Arc::clone(&conn),
        Arc::clone(&audit),
        from_client,
        Arc::clone(&to_up),
    )));
    let mut cut = conn.cut.clone();
    let mut notices = conn.notices.subscribe();
    let down = pump_down(&conn, &audit, from_up, &to_client, &server);
    tokio::pin!(down);
    loop {
        tokio::select! {
            () = &mut down => break,
            text = cut_line(&mut cut) => {
                let _ = to_client.extended_data_bytes(STDERR, line(&text)).await;
                end(&to_client).await;
                let _ = to_up.close().await;
                break;
            }
            text = next_notice(&mut notices) => {
                let _ = to_client.extended_data_bytes(STDERR, line(&text)).await;
            }
        }
    }
    // The engineer's pump stops with the channel; then what the channel
    // left behind (the command's end, files still open) is recorded.
    drop(up);
    audit.finish().await;
}

/// The next warning for this channel; waits forever once none can come.
async fn next_notice(notices: &mut broadcast::Receiver<String>) -> String {
    loop {
        match notices.recv().await {
            Ok(text) => return text,
            // Skipped warnings are older than the ones still queued.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// The cut line, once the enforcer sets it.
async fn cut_line(cut: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(text) = cut.borrow_and_update().clone() {
            return text;
        }
        if cut.changed().await.is_err() {
            // The enforcer is gone without a cut: the connection is ending anyway.
            std::future::pending::<()>().await;
        }
    }
}

/// Engineer to server.
async fn pump_up(
    conn: Arc<Conn>,
    audit: Arc<ChannelAudit>,
    mut from_client: ChannelReadHalf,
    to_up: Arc<ChannelWriteHalf<client::Msg>>,
) {
    // A channel runs one program: a second request was answered with a
    // failure by the handler and never reaches the server.
    let mut running = false;
    while let Some(msg) = from_client.wait().await {
        let again = matches!(
            msg,
            ChannelMsg::RequestShell { .. } | ChannelMsg::Exec { .. } | ChannelMsg::RequestSubsystem { .. }
        ) && std::mem::replace(&mut running, true);
        if again {
            tracing::info!(user = %conn.user, "ssh: a second program on one channel refused");
            continue;
        }
        let sent = match msg {
            ChannelMsg::Data { data } => {
                if let Some(s) = &conn.session {
                    s.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                // Before it is relayed: the request is known before its answer can
                // come. What the audit cannot follow never runs: the cut follows.
                if !audit.from_client(&data).await {
                    continue;
                }
                to_up.data_bytes(data).await
            }
            ChannelMsg::Eof => to_up.eof().await,
            ChannelMsg::Close => {
                let _ = to_up.close().await;
                return;
            }
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                audit.pty(&term, col_width, row_height);
                to_up
                    .request_pty(
                        false,
                        &term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        &terminal_modes,
                    )
                    .await
            }
            ChannelMsg::RequestShell { .. } => {
                audit.shell();
                to_up.request_shell(true).await
            }
            ChannelMsg::Exec { command, .. } => {
                // Not the command itself: a command line can carry a secret.
                // The audit log has it, redacted.
                tracing::debug!(user = %conn.user, bytes = command.len(), "ssh exec");
                audit.exec(&command);
                to_up.exec(true, command).await
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                audit.subsystem(&name);
                to_up.request_subsystem(true, name).await
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                audit.resize(col_width, row_height).await;
                to_up.window_change(col_width, row_height, pix_width, pix_height).await
            }
            ChannelMsg::Signal { signal } => to_up.signal(signal).await,
            // russh hands every env request to the channel, so the policy is checked again here.
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if conn
                .admission
                .as_ref()
                .is_ok_and(|a| a.role.ssh_policy.env_allowed(&variable_name)) =>
            {
                to_up.set_env(false, variable_name, variable_value).await
            }
            // Env, X11 and agent forwarding were refused by the handler.
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
    // The engineer's side is gone (the connection dropped): nothing must keep running upstream.
    let _ = to_up.close().await;
}

/// Server to engineer; returns when the upstream channel ends.
async fn pump_down(
    conn: &Conn,
    audit: &ChannelAudit,
    mut from_up: ChannelReadHalf,
    to_client: &ChannelWriteHalf<Msg>,
    server: &Handle,
) {
    let count = |n: usize| {
        if let Some(s) = &conn.session {
            s.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    while let Some(msg) = from_up.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                count(data.len());
                audit.from_server(&data).await;
                to_client.data_bytes(data).await
            }
            ChannelMsg::ExtendedData { data, ext } => {
                count(data.len());
                audit.from_server_stderr(&data).await;
                to_client.extended_data_bytes(ext, data).await
            }
            ChannelMsg::Eof => to_client.eof().await,
            ChannelMsg::ExitStatus { exit_status } => {
                audit.exit_status(exit_status);
                to_client.exit_status(exit_status).await
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                audit.exit_signal(match &signal_name {
                    russh::Sig::Custom(name) => name.clone(),
                    known => format!("{known:?}"),
                });
                let _ = server
                    .exit_signal_request(to_client.id(), signal_name, core_dumped, error_message, lang_tag)
                    .await;
                Ok(())
            }
            // The command itself was refused upstream (want_reply was set only on it).
            ChannelMsg::Failure => {
                let _ = to_client
                    .extended_data_bytes(STDERR, line("the server refused to run the command"))
                    .await;
                end(to_client).await;
                return;
            }
            ChannelMsg::Close => break,
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = to_client.close().await;
}
