//! systemd's readiness protocol (`Type=notify`), through the sd-notify
//! crate (a small, maintained implementation of `sd_notify(3)`): READY=1
//! once start-up has enforced every instance that exists, RELOADING=1 and
//! READY=1 around each reload, STATUS= saying what is in force, STOPPING=1
//! when the agent stops. Without `NOTIFY_SOCKET` (not under systemd) each
//! call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        log::warn!("telling the service manager: {e}");
    }
}

/// Enforcing; `status` says what.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (systemd wants the monotonic time with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A long start (or reload) making progress: `status` says how far, and
/// systemd's start timeout is pushed `extend` further out (a host of
/// hundreds of instances takes longer to load than the default 90 s; a
/// start that stops making progress still times out).
pub fn progress(status: &str, extend: std::time::Duration) {
    let usec = u32::try_from(extend.as_micros()).unwrap_or(u32::MAX);
    send(&[
        NotifyState::Status(status),
        NotifyState::ExtendTimeoutUsec(usec),
    ]);
}
