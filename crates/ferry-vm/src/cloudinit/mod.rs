//! cloud-init NoCloud seeds: what a VM is told at its first boot (its
//! host name, users and their keys, its network), as the three files of
//! a `cidata` volume (`meta-data`, `user-data`, `network-config` version
//! 2), written as an ISO 9660 image ([`iso`]).
//!
//! The files are written by serde_json: JSON is YAML (a YAML 1.2 document
//! in flow style, which cloud-init's YAML reader takes), so no value a
//! user gives is ever pasted into YAML text, and none can break out of its
//! string, whatever characters it holds.

pub mod iso;

use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};

/// A user cloud-init makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// `ssh-ed25519 AAAA... comment` lines.
    pub ssh_keys: Vec<String>,
    /// A crypt(3) hash (`$6$...`); `None`: the password is locked.
    pub password_hash: Option<String>,
    /// Passwordless sudo (the cloud image's default user has it).
    pub sudo: bool,
}

/// The guest's network: one NIC, found by its MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub mac: String,
    /// The name the guest gives it (`eth0`).
    pub name: String,
    /// `None`: DHCP.
    pub address: Option<ipnet::Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
}

/// Everything a seed says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Changes when the seed must be applied again (cloud-init runs its
    /// once-per-instance steps again for a new id).
    pub instance_id: String,
    /// The host name, short or fully qualified.
    pub hostname: String,
    pub users: Vec<User>,
    /// root's password hash, if root gets one.
    pub root_password_hash: Option<String>,
    pub network: Option<Network>,
}

impl Seed {
    pub fn meta_data(&self) -> Value {
        json!({
            "instance-id": self.instance_id,
            "local-hostname": self.hostname,
        })
    }

    pub fn user_data(&self) -> Value {
        let short = self.hostname.split('.').next().unwrap_or(&self.hostname);
        let root = self.root_password_hash.as_ref().map(|h| User {
            name: "root".into(),
            ssh_keys: Vec::new(),
            password_hash: Some(h.clone()),
            sudo: false,
        });
        let users: Vec<Value> = self
            .users
            .iter()
            .chain(root.as_ref())
            .map(|u| {
                let mut m = Map::new();
                m.insert("name".into(), json!(u.name));
                m.insert("shell".into(), json!("/bin/bash"));
                m.insert("lock_passwd".into(), json!(u.password_hash.is_none()));
                if let Some(h) = &u.password_hash {
                    // hashed_passwd: also set on a user the image has.
                    m.insert("hashed_passwd".into(), json!(h));
                }
                if u.sudo {
                    m.insert("sudo".into(), json!("ALL=(ALL) NOPASSWD:ALL"));
                }
                if !u.ssh_keys.is_empty() {
                    m.insert("ssh_authorized_keys".into(), json!(u.ssh_keys));
                }
                Value::Object(m)
            })
            .collect();
        let any_password = self.root_password_hash.is_some()
            || self.users.iter().any(|u| u.password_hash.is_some());
        let mut d = json!({
            "hostname": short,
            "fqdn": self.hostname,
            "prefer_fqdn_over_hostname": self.hostname.contains('.'),
            "manage_etc_hosts": true,
            "users": users,
            "ssh_pwauth": any_password,
            "disable_root": self.root_password_hash.is_none(),
        });
        d["chpasswd"] = json!({"expire": false});
        d
    }

    pub fn network_config(&self) -> Option<Value> {
        let n = self.network.as_ref()?;
        let mut nic = json!({
            "match": {"macaddress": n.mac},
            "set-name": n.name,
        });
        match n.address {
            Some(a) => {
                nic["addresses"] = json!([a.to_string()]);
                // gateway4, not a 0.0.0.0/0 route: every renderer of
                // cloud-init (ifupdown's too) turns it into the default
                // route without tools the image may lack.
                if let Some(g) = n.gateway {
                    nic["gateway4"] = json!(g.to_string());
                }
            }
            None => nic["dhcp4"] = json!(true),
        }
        if !n.nameservers.is_empty() || !n.search.is_empty() {
            nic["nameservers"] = json!({
                "addresses": n.nameservers.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "search": n.search,
            });
        }
        Some(json!({"version": 2, "ethernets": {"id0": nic}}))
    }

    /// The seed's files by name, as text.
    pub fn files(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("meta-data", self.meta_data().to_string() + "\n"),
            (
                "user-data",
                format!("#cloud-config\n{}\n", pretty(&self.user_data())),
            ),
        ];
        if let Some(n) = self.network_config() {
            out.push(("network-config", pretty(&n) + "\n"));
        }
        out
    }

    /// The `cidata` ISO image of the seed.
    pub fn image(&self) -> Result<Vec<u8>, iso::IsoError> {
        let files = self.files();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (*n, t.as_bytes())).collect();
        iso::image("cidata", &refs)
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed {
            instance_id: "vm1-1".into(),
            hostname: "cent1.my.domain".into(),
            users: vec![User {
                name: "debian".into(),
                ssh_keys: vec!["ssh-ed25519 AAAAC3Nz root@gizmo".into()],
                password_hash: None,
                sudo: true,
            }],
            root_password_hash: Some("$6$salt$hash".into()),
            network: Some(Network {
                mac: "52:54:00:12:34:56".into(),
                name: "eth0".into(),
                address: Some("172.16.0.99/24".parse().expect("net")),
                gateway: Some("172.16.0.1".parse().expect("ip")),
                nameservers: vec!["8.8.8.8".parse().expect("ip")],
                search: vec!["my.domain".into()],
            }),
        }
    }

    #[test]
    fn the_seed_says_cbsd_s_settings_as_cloud_init_reads_them() {
        let s = seed();
        let files = s.files();
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["meta-data", "user-data", "network-config"]);
        assert!(files[1].1.starts_with("#cloud-config\n{"));
        let u = s.user_data();
        assert_eq!(u["hostname"], "cent1");
        assert_eq!(u["fqdn"], "cent1.my.domain");
        assert_eq!(
            u["users"][0]["ssh_authorized_keys"][0],
            "ssh-ed25519 AAAAC3Nz root@gizmo"
        );
        assert_eq!(u["users"][0]["lock_passwd"], true);
        assert_eq!(u["users"][1]["name"], "root");
        assert_eq!(u["users"][1]["hashed_passwd"], "$6$salt$hash");
        assert_eq!(u["users"][1]["lock_passwd"], false);
        let n = s.network_config().expect("network");
        assert_eq!(n["ethernets"]["id0"]["addresses"][0], "172.16.0.99/24");
        assert_eq!(n["ethernets"]["id0"]["gateway4"], "172.16.0.1");
        assert_eq!(
            n["ethernets"]["id0"]["match"]["macaddress"],
            "52:54:00:12:34:56"
        );
    }

    #[test]
    fn a_value_that_would_break_yaml_stays_one_string() {
        let mut s = seed();
        let hostile = "x\"\n- evil: true\n#: ]}{'";
        s.users[0].ssh_keys = vec![hostile.into()];
        let text = &s.files()[1].1;
        let back: Value =
            serde_json::from_str(text.trim_start_matches("#cloud-config\n")).expect("JSON");
        assert_eq!(back["users"][0]["ssh_authorized_keys"][0], hostile);
        let names: Vec<&str> = back["users"]
            .as_array()
            .expect("users")
            .iter()
            .filter_map(|u| u["name"].as_str())
            .collect();
        assert_eq!(names, ["debian", "root"]);
    }

    #[test]
    fn without_an_address_the_nic_asks_dhcp() {
        let mut s = seed();
        if let Some(n) = s.network.as_mut() {
            n.address = None;
        }
        let n = s.network_config().expect("network");
        assert_eq!(n["ethernets"]["id0"]["dhcp4"], true);
        assert!(n["ethernets"]["id0"].get("gateway4").is_none());
    }
}
