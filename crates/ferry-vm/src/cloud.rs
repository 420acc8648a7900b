//! A VM's cloud-init settings (CBSD's `ci_*` keys of `bcreate`): checked
//! at create, turned into its NoCloud seed at each start
//! ([`crate::cloudinit`]), written under `jails-system/<jname>/cloud-init/`
//! (shared storage: the seed moves with the VM) and attached as a
//! read-only virtio disk, since Debian's cloud kernel has no AHCI driver to
//! see a CD-ROM with. The seed's instance id carries a hash of what it
//! says, so a changed key is applied by cloud-init at the next boot.
//!
//! Passwords are kept only as SHA-512 crypt hashes: `bcreate` hashes a
//! password it is given before it writes the definition, and `*` (CBSD's
//! word) locks the account.

use std::ffi::OsString;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ferry_api::command::BcreateArgs;
use ferry_core::workdir::fnv1a;
use ferry_core::{atomic, Error, Result, Workdir};

use crate::cloudinit::{Network, Seed, User};
use crate::config::VmConfig;

/// Whether a VM has cloud-init settings (and so a seed).
pub fn is_cloud(a: &BcreateArgs) -> bool {
    a.ci_user_add.is_some()
        || a.ci_ip4_addr.is_some()
        || a.ci_user_pubkey.is_some()
        || !a.ci_user_pubkey_.is_empty()
        || a.ci_user_pw_root.is_some()
        || a.ci_user_pw_user.is_some()
}

/// A crypt(3) hash as cloud-init and shadow take it.
fn is_crypt(v: &str) -> bool {
    ["$1$", "$5$", "$6$", "$y$", "$2b$", "$2y$"]
        .iter()
        .any(|p| v.starts_with(p))
}

/// Replace each password given in clear by its SHA-512 crypt hash.
pub fn hash_passwords(a: &mut BcreateArgs) -> Result<()> {
    for (key, pw) in [
        ("ci_user_pw_root", &mut a.ci_user_pw_root),
        ("ci_user_pw_user", &mut a.ci_user_pw_user),
    ] {
        if let Some(p) = pw.as_mut() {
            *p = hashed(key, p)?;
        }
    }
    Ok(())
}

/// The value a password key `key` is kept as: its SHA-512 crypt hash
/// (`*`, a lock, and a value already hashed are kept as they are).
pub fn hashed(key: &str, value: &str) -> Result<String> {
    if value == "*" || is_crypt(value) {
        return Ok(value.to_owned());
    }
    if value.is_empty() || value.contains(['\n', '\r', '\0']) {
        return Err(Error::bad_value(
            key,
            "(hidden)",
            "must be one line, not empty",
        ));
    }
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|e| Error::Failed(format!("cannot hash {key}: {e:?}")))?;
    sha_crypt::sha512_simple(value, &params)
        .map_err(|e| Error::Failed(format!("cannot hash {key}: {e:?}")))
}

/// `ADDR[/PREFIX]` (prefix 24 by default), or `None` for DHCP.
fn address(v: &str) -> Result<Option<ipnet::Ipv4Net>> {
    if v.eq_ignore_ascii_case("dhcp") {
        return Ok(None);
    }
    let bad = || Error::bad_value("ci_ip4_addr", v, "not ADDR[/PREFIX] nor DHCP");
    if let Ok(n) = v.parse::<ipnet::Ipv4Net>() {
        return Ok(Some(n));
    }
    let a: Ipv4Addr = v.parse().map_err(|_| bad())?;
    ipnet::Ipv4Net::new(a, 24).map(Some).map_err(|_| bad())
}

fn list(v: &Option<String>) -> Vec<&str> {
    v.as_deref()
        .unwrap_or("")
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .collect()
}

fn user_name_ok(n: &str) -> bool {
    n.len() <= 32
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn key_ok(k: &str) -> bool {
    let mut words = k.split_whitespace();
    let kind = words.next().unwrap_or("");
    let body = words.next().unwrap_or("");
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        && !k.contains(['\n', '\r', '\0'])
}

/// The seed a VM with these settings gets (its instance id is set when it
/// is written), or `None` without cloud-init settings. Checks every
/// `ci_*` value (a bad one is exit 2).
pub fn seed(j: &str, a: &BcreateArgs, mac: &str) -> Result<Option<Seed>> {
    if !is_cloud(a) {
        return Ok(None);
    }
    let hostname = a.host_hostname.clone().unwrap_or_else(|| j.to_owned());
    let host_ok = !hostname.is_empty()
        && hostname.len() <= 253
        && hostname.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !host_ok {
        return Err(Error::bad_value(
            "host_hostname",
            &hostname,
            "not a host name",
        ));
    }
    let main = a
        .ci_user_add
        .as_ref()
        .map_or("user", |w| w.0.as_str())
        .to_owned();
    let mut users: Vec<User> = Vec::new();
    let mut user = |name: &str, key: Option<&String>, field: &str| -> Result<()> {
        if !user_name_ok(name) {
            return Err(Error::bad_value(
                field,
                name,
                "not a user name (a-z 0-9 _ -)",
            ));
        }
        if let Some(k) = key {
            if !key_ok(k) {
                return Err(Error::bad_value(
                    field,
                    k,
                    "not an SSH public key (ssh-ed25519 AAAA... comment)",
                ));
            }
        }
        match users.iter_mut().find(|u| u.name == name) {
            Some(u) => u.ssh_keys.extend(key.cloned()),
            None => users.push(User {
                name: name.to_owned(),
                ssh_keys: key.cloned().into_iter().collect(),
                password_hash: None,
                sudo: true,
            }),
        }
        Ok(())
    };
    user(&main, a.ci_user_pubkey.as_ref(), "ci_user_pubkey")?;
    for (name, key) in &a.ci_user_pubkey_ {
        user(name, Some(key), &format!("ci_user_pubkey_{name}"))?;
    }
    let hashed = |v: &Option<String>| v.clone().filter(|p| p != "*");
    if let Some(u) = users.iter_mut().find(|u| u.name == main) {
        u.password_hash = hashed(&a.ci_user_pw_user);
    }
    // Checked whether or not the VM has a NIC now: bset may give it one.
    let gateway = match a.ci_gw4.as_deref() {
        None | Some("auto") | Some("") => None,
        Some(g) => Some(
            g.parse::<Ipv4Addr>()
                .map_err(|_| Error::bad_value("ci_gw4", g, "not an IPv4 address nor auto"))?,
        ),
    };
    let nameservers = list(&a.ci_nameserver_address)
        .into_iter()
        .map(|n| {
            n.parse::<Ipv4Addr>()
                .map_err(|_| Error::bad_value("ci_nameserver_address", n, "not an IPv4 address"))
        })
        .collect::<Result<Vec<_>>>()?;
    let search = list(&a.ci_nameserver_search)
        .into_iter()
        .map(|d| {
            if d.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            {
                Ok(d.to_owned())
            } else {
                Err(Error::bad_value("ci_nameserver_search", d, "not a domain"))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let address = a.ci_ip4_addr.as_deref().map(address).transpose()?.flatten();
    let network = (a.vm_nic != ferry_api::command::NicKind::None).then(|| {
        let prefix = a.ci_interface_name.as_ref().map_or("eth", |w| w.0.as_str());
        Network {
            mac: mac.to_owned(),
            name: format!("{prefix}0"),
            address,
            gateway,
            nameservers,
            search,
        }
    });
    Ok(Some(Seed {
        instance_id: String::new(),
        hostname,
        users,
        root_password_hash: hashed(&a.ci_user_pw_root),
        network,
    }))
}

/// Where a VM's seed lives: `jails-system/<jname>/cloud-init/`.
pub fn dir(wd: &Workdir, cfg: &VmConfig) -> PathBuf {
    wd.system_dir(cfg.jname()).join("cloud-init")
}

fn image_path(wd: &Workdir, cfg: &VmConfig) -> PathBuf {
    dir(wd, cfg).join("seed.iso")
}

/// Write the VM's seed (its files, readable by root only, and the image)
/// when it has cloud-init settings; before each start.
pub fn write(wd: &Workdir, cfg: &VmConfig) -> Result<()> {
    let Some(mut s) = seed(
        cfg.jname().as_str(),
        &cfg.args,
        &crate::qemu::mac(cfg.jname()),
    )?
    else {
        return Ok(());
    };
    // A new id when what the seed says changes: cloud-init applies it again.
    let text: String = s.files().into_iter().map(|(_, t)| t).collect();
    s.instance_id = format!("{}-{:016x}", cfg.jname(), fnv1a(text.as_bytes()));
    let d = dir(wd, cfg);
    fs::create_dir_all(&d).map_err(Error::io("cannot create", &d))?;
    fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(Error::io("cannot set mode", &d))?;
    for (name, text) in s.files() {
        let p = d.join(name);
        atomic::write_atomic(&p, text.as_bytes(), 0o600).map_err(Error::io("cannot write", &p))?;
    }
    let img = s
        .image()
        .map_err(|e| Error::Failed(format!("cannot make the seed image: {e}")))?;
    let p = image_path(wd, cfg);
    atomic::write_atomic(&p, &img, 0o600).map_err(Error::io("cannot write", &p))
}

/// The seed's disk on QEMU's command line: read-only virtio, at a fixed
/// address (slot 0x0f of the root bus), so a migration finds it where it
/// was.
pub fn command_line(wd: &Workdir, cfg: &VmConfig) -> Vec<OsString> {
    if !is_cloud(&cfg.args) {
        return Vec::new();
    }
    let bus = if cfg.args.vm_machine.0.contains("q35") {
        "pcie.0"
    } else {
        "pci.0"
    };
    let blockdev = serde_json::json!({
        "driver": "raw", "node-name": "cidata", "read-only": true,
        "file": {"driver": "file", "filename": image_path(wd, cfg), "read-only": true},
    });
    vec![
        "-blockdev".into(),
        blockdev.to_string().into(),
        "-device".into(),
        format!("virtio-blk-pci,drive=cidata,id=cidata,bus={bus},addr=0x0f").into(),
    ]
}
