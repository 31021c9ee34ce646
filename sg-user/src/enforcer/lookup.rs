//! What the kernel holds for one client address, read back for the policy service: the
//! allow list wins, a deny entry is a block, else the strictest live limit of the address,
//! its prefix and its network.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use sg_common::{PolicyKey, action, apply_mask, is_v4_mapped};

use super::Maps;
use crate::domain::{Limit, Network, Rate, boot_time_ns};

impl Maps {
    /// The limit that applies to new connections from `addr` (None: none, or allow-listed).
    pub fn limit_for_address(&self, addr: IpAddr) -> anyhow::Result<Option<Limit>> {
        let net = Network::from_ipnet(ipnet::IpNet::from(addr));
        let now = boot_time_ns();
        let live = |expires_ns: u64| expires_ns == 0 || now < expires_ns;
        let key = Key::new(128, net.addr);
        if self.allow.get(&key, 0).is_ok_and(|e| live(e.expires_ns)) {
            return Ok(None);
        }
        if self.deny.get(&key, 0).is_ok_and(|e| live(e.expires_ns)) {
            return Ok(Some(Limit::Block));
        }
        let config = self.read_config()?;
        let (prefix_mask, prefix_len, network_mask, network_len) = if is_v4_mapped(&net.addr) {
            (
                config.prefix_mask_v4,
                config.prefix_len_v4,
                config.network_mask_v4,
                config.network_len_v4,
            )
        } else {
            (
                config.prefix_mask_v6,
                config.prefix_len_v6,
                config.network_mask_v6,
                config.network_len_v6,
            )
        };
        let keys = [
            PolicyKey {
                addr: net.addr,
                prefix_len: 128,
            },
            PolicyKey {
                addr: apply_mask(&net.addr, &prefix_mask),
                prefix_len,
            },
            PolicyKey {
                addr: apply_mask(&net.addr, &network_mask),
                prefix_len: network_len,
            },
        ];
        let mut strictest: Option<Limit> = None;
        for key in keys {
            let Ok(p) = self.policy.get(&key, 0) else {
                continue;
            };
            if !live(p.expires_ns) {
                continue;
            }
            let limit = if p.action == action::BLOCK {
                Limit::Block
            } else {
                Limit::Rate {
                    rate: Rate {
                        interval: std::time::Duration::from_nanos(p.interval_ns),
                    },
                    burst: p.burst,
                }
            };
            strictest = Some(match (strictest, limit) {
                (Some(Limit::Block), _) | (_, Limit::Block) => Limit::Block,
                (Some(Limit::Rate { rate: a, burst: ab }), Limit::Rate { rate: b, burst: bb }) => {
                    if b.interval > a.interval {
                        Limit::Rate { rate: b, burst: bb }
                    } else {
                        Limit::Rate { rate: a, burst: ab }
                    }
                }
                (None, l) => l,
            });
        }
        Ok(strictest)
    }
}
