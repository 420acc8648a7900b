//! `image`: the node's disk images VMs are made from.

use ferry_api::args::Size;
use ferry_api::command::{ImageArgs, ImageMode};
use ferry_api::{Columns, Outcome};
use ferry_core::{Error, Jname, Result};
use ferry_vm::image::{self, Source};
use serde_json::json;

use crate::context::{listing, view, Context};

const COLUMNS: Columns = Columns {
    default: &["name", "format", "virtual_size", "sha256"],
    more: &["bytes", "source", "added"],
};

pub fn run(ctx: &Context, a: ImageArgs) -> Result<Outcome> {
    let (wd, _) = ctx.open()?;
    let name = |mode: &str| -> Result<Jname> {
        a.name
            .clone()
            .ok_or_else(|| Error::bad_value("name", "", format!("is required with mode={mode}")))
    };
    match a.mode {
        ImageMode::List => {
            let mut l = listing(COLUMNS, &view(&a.display, a.header))?;
            for i in image::list(&wd)? {
                l.push(json!({
                    "name": i.name, "format": i.format,
                    "virtual_size": Size(i.virtual_size).render(), "sha256": i.sha256,
                    "bytes": i.bytes, "source": i.source, "added": i.added,
                }));
            }
            Ok(Outcome::Listing(l))
        }
        ImageMode::Add => {
            let n = name("add")?;
            let source = match (&a.path, &a.url) {
                (Some(p), None) => Source::Path(p.clone()),
                (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
                    Source::Url(u.clone())
                }
                (None, Some(u)) => {
                    return Err(Error::bad_value(
                        "url",
                        u,
                        "must be an http:// or https:// URL",
                    ))
                }
                _ => {
                    return Err(Error::bad_value(
                        "path",
                        "",
                        "give one of path= (a local file) and url= (http or https)",
                    ))
                }
            };
            let progress = |done: u64, total: u64| {
                let percent = (done * 99).checked_div(total).unwrap_or(0);
                ctx.step(
                    percent as u8,
                    format!("{} MiB of {} MiB of image {n}", done >> 20, total >> 20),
                );
            };
            let i = image::add(&wd, &n, &source, a.sha256.as_deref(), &progress)?;
            Ok(Outcome::message(format!(
                "image {n} added ({}, {} disk, sha256 {})",
                i.format,
                Size(i.virtual_size).render(),
                i.sha256
            )))
        }
        ImageMode::Remove => {
            let n = name("remove")?;
            image::remove(&wd, &n)?;
            Ok(Outcome::message(format!(
                "image {n} removed from this node (the pool's shared copy stays for the VMs on it)"
            )))
        }
    }
}
