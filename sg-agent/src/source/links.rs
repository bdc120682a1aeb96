//! Link events: an interface that appears or changes (a VM's tap made by
//! QEMU or libvirt, a container's veth, an interface deleted and made
//! again) wakes the enforcement thread at once, so the instance on it is
//! enforced within milliseconds instead of at the next reconcile tick,
//! which stays as the safety net.
//!
//! One route-netlink socket per network namespace that holds an instance,
//! subscribed to `RTMGRP_LINK` (through rtnetlink, the rust-netlink
//! project's client). A socket belongs to the namespace it was made in, so
//! each is made while the thread stands in that namespace. Events carry no
//! decision: the enforcement thread compares what the rules ask for with
//! what the kernel has, as on every tick.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use futures_util::StreamExt as _;
use rtnetlink::{
    constants::RTMGRP_LINK,
    packet_core::NetlinkPayload,
    packet_route::{RouteNetlinkMessage, link::LinkAttribute},
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::watch;

use crate::dataplane::netns::NetnsGuard;

/// A namespace to watch: its name (`None`: the agent's own; an absolute
/// path: a namespace file) and the inode of the namespace it named, so a
/// namespace deleted and made again under the same name is watched anew.
pub type Namespace = (Option<String>, u64);

/// How often namespaces that could not be watched yet (not there yet) are
/// tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Follows link events in each namespace of `wanted` (set by the
/// enforcement thread as instances come and go), calling `event(netns,
/// ifname)` for every new or changed link. Runs until `wanted`'s sender
/// goes.
pub async fn follow<F>(mut wanted: watch::Receiver<BTreeSet<Namespace>>, event: F)
where
    F: Fn(Option<String>, String) + Clone + Send + 'static,
{
    let mut tasks: BTreeMap<Namespace, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let set = wanted.borrow_and_update().clone();
        tasks.retain(|ns, task| {
            let keep = set.contains(ns) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for ns in set {
            if tasks.contains_key(&ns) {
                continue;
            }
            match subscribe(ns.0.as_deref()) {
                Ok((connection, mut messages)) => {
                    let event = event.clone();
                    let name = ns.0.clone();
                    tasks.insert(
                        ns,
                        tokio::spawn(async move {
                            let connection = tokio::spawn(connection);
                            while let Some((message, _)) = messages.next().await {
                                if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(
                                    link,
                                )) = message.payload
                                {
                                    let ifname = link.attributes.iter().find_map(|a| match a {
                                        LinkAttribute::IfName(n) => Some(n.clone()),
                                        _ => None,
                                    });
                                    event(name.clone(), ifname.unwrap_or_default());
                                }
                            }
                            connection.abort();
                        }),
                    );
                }
                Err(e) => log::debug!(
                    "link events of {}: {e}; the reconcile tick covers it meanwhile",
                    ns.0.as_deref().unwrap_or("the host namespace")
                ),
            }
        }
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() {
                break;
            },
            () = tokio::time::sleep(RETRY) => {}
        }
    }
    for task in tasks.into_values() {
        task.abort();
    }
}

/// One message of a route-netlink socket, and who sent it.
type Message = (
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    SocketAddr,
);

/// A route-netlink socket made in `netns`, subscribed to link events: the
/// connection to drive, and its messages.
fn subscribe(
    netns: Option<&str>,
) -> std::io::Result<(
    rtnetlink::proto::Connection<RouteNetlinkMessage>,
    impl futures_util::Stream<Item = Message> + Send + Unpin + 'static,
)> {
    let _guard = NetnsGuard::enter_opt(netns).map_err(std::io::Error::other)?;
    let (mut connection, _, messages) = rtnetlink::new_connection()?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    Ok((connection, messages))
}
