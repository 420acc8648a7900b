//! VM profiles (CBSD's `vm_os_profile=`): `vm-<vm_os_type>-<name>.conf`,
//! whose `bcreate` keys fill in what `bcreate` was not given
//! ([`ferry_api::profile`]), and which may name the image `dsk1` is made
//! from (`image=`, with `image_url=` and `imgsize_min=`). Shipped:
//! `cloud-Debian-x86-12`.

use ferry_api::args::Size;
use ferry_api::command::BcreateArgs;
use ferry_api::profile::{Kind, Profile};
use ferry_api::Command;
use ferry_core::{Error, Jname, Result, Workdir};

const KIND: Kind = Kind {
    key: "vm_os_profile",
    command: "bcreate",
    own_keys: &[
        "long_description",
        "is_cloud",
        "image",
        "image_url",
        "imgsize_min",
    ],
    forbidden: &[
        "jname",
        "vm_os_profile",
        "runasap",
        "vm_kernel",
        "vm_initrd",
    ],
    shipped: &[(
        "vm-linux-cloud-Debian-x86-12.conf",
        include_str!("../../../share/profiles/vm-linux-cloud-Debian-x86-12.conf"),
    )],
};

/// A VM profile, read and checked.
#[derive(Debug, Clone)]
pub struct VmProfile(Profile);

impl VmProfile {
    /// Profile `name` for guests of `os` (bcreate's `vm_os_type`).
    pub fn load(wd: &Workdir, os: &str, name: &str) -> Result<VmProfile> {
        let file = format!("vm-{os}-{name}.conf");
        Profile::load(wd.root(), &KIND, name, &file).map(VmProfile)
    }

    /// The image `dsk1` is made from, if the profile names one.
    pub fn image(&self) -> Result<Option<Jname>> {
        self.0
            .get("image")
            .map(|i| Jname::new(i).map_err(|e| Error::bad_value("image", i, e.to_string())))
            .transpose()
    }

    /// Where the image is fetched from, for the hint of a missing one.
    pub fn image_url(&self) -> Option<&str> {
        self.0.get("image_url")
    }

    /// The smallest `imgsize` the image takes.
    pub fn imgsize_min(&self) -> Result<u64> {
        self.0.get("imgsize_min").map_or(Ok(0), |v| {
            Size::parse(v)
                .map(|s| s.0)
                .map_err(|e| Error::bad_value("imgsize_min", v, e.to_string()))
        })
    }

    /// `args` with this profile's settings for what they were not given.
    pub fn apply(&self, args: BcreateArgs) -> Result<BcreateArgs> {
        let given = args.given.clone();
        match self.0.fill(
            &KIND,
            Command::Bcreate(args),
            &given,
            &|_| false,
            Vec::new(),
        )? {
            Command::Bcreate(a) => Ok(a),
            _ => Err(Error::Failed("a profile made another command".into())),
        }
    }
}
