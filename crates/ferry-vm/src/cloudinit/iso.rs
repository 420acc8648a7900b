//! A small ISO 9660 image of a few files in its root, with Joliet names
//! (what a NoCloud seed is: a `cidata` volume holding `meta-data`,
//! `user-data` and `network-config`). Written by ferry rather than by
//! `genisoimage`: no program to install and run for a few kilobytes, and
//! the image is a pure function of the files (byte for byte the same for
//! the same input, so ferry can tell when a seed changed).
//!
//! Layout (2048-byte sectors): 0-15 system area; 16 primary volume
//! descriptor; 17 Joliet supplementary descriptor; 18 terminator; 19-22
//! the two path tables of each tree; 23 and 24 the root directories (ISO
//! names, Joliet names); then each file's data from a sector boundary.
//! ECMA-119 for the structures, Joliet (UCS-2 level 3) for the names that
//! Linux shows.

/// Bytes in a sector.
const SECTOR: usize = 2048;
const PVD: usize = 16;
const FIRST_DATA: usize = 25;

/// Why an image cannot be made of these files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    #[error("a volume label is 1 to 16 of a-z 0-9 _, not {0:?}")]
    Label(String),
    #[error("file name {0:?} is not 1 to 64 of a-z 0-9 - _ .")]
    Name(String),
    #[error("{0} files do not fit one directory sector")]
    TooMany(usize),
    #[error("the image would exceed 4 GiB")]
    TooLarge,
}

/// The image of a volume labelled `label` whose root holds `files`.
pub fn image(label: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, IsoError> {
    if label.is_empty()
        || label.len() > 16
        || !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(IsoError::Label(label.to_owned()));
    }
    let mut sorted: Vec<(&str, &[u8])> = files.to_vec();
    for (name, _) in &sorted {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !ok {
            return Err(IsoError::Name((*name).to_owned()));
        }
    }
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    // Where each file's data starts, in sectors.
    let mut extents = Vec::with_capacity(sorted.len());
    let mut next = FIRST_DATA;
    for (_, data) in &sorted {
        extents.push(next);
        next += data.len().div_ceil(SECTOR).max(1);
    }
    let total = next;
    if u32::try_from(total * SECTOR).is_err() {
        return Err(IsoError::TooLarge);
    }
    let mut img = vec![0u8; total * SECTOR];
    let iso_names: Vec<Vec<u8>> = sorted.iter().map(|(n, _)| iso_name(n)).collect();
    let joliet_names: Vec<Vec<u8>> = sorted.iter().map(|(n, _)| ucs2(n)).collect();
    let dir = |names: &[Vec<u8>], own: usize| -> Result<Vec<u8>, IsoError> {
        let mut d = Vec::new();
        d.extend(record(&[0], own, SECTOR, true));
        d.extend(record(&[1], own, SECTOR, true));
        for ((name, ext), (_, data)) in names.iter().zip(&extents).zip(&sorted) {
            d.extend(record(name, *ext, data.len(), false));
        }
        if d.len() > SECTOR {
            return Err(IsoError::TooMany(sorted.len()));
        }
        Ok(d)
    };
    let (iso_root, joliet_root) = (23, 24);
    put(&mut img, iso_root * SECTOR, &dir(&iso_names, iso_root)?);
    put(
        &mut img,
        joliet_root * SECTOR,
        &dir(&joliet_names, joliet_root)?,
    );
    for (ext, (_, data)) in extents.iter().zip(&sorted) {
        put(&mut img, ext * SECTOR, data);
    }
    for (root, le, be) in [(iso_root, 19, 20), (joliet_root, 21, 22)] {
        put(&mut img, le * SECTOR, &path_table(root, true));
        put(&mut img, be * SECTOR, &path_table(root, false));
    }
    let label_iso: Vec<u8> = label.bytes().collect();
    put(
        &mut img,
        PVD * SECTOR,
        &descriptor(1, &label_iso, total, (19, 20), iso_root, false),
    );
    put(
        &mut img,
        (PVD + 1) * SECTOR,
        &descriptor(2, &ucs2(label), total, (21, 22), joliet_root, true),
    );
    let mut term = vec![255u8];
    term.extend(b"CD001\x01");
    put(&mut img, (PVD + 2) * SECTOR, &term);
    Ok(img)
}

fn put(img: &mut [u8], at: usize, bytes: &[u8]) {
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

/// A number in both byte orders, as ECMA-119 writes most of them.
fn both32(v: usize) -> [u8; 8] {
    let v = v as u32;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

/// A level-1 name for the primary tree (`USER_DAT.;1`); Linux shows the
/// Joliet ones.
fn iso_name(name: &str) -> Vec<u8> {
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .take(n)
            .collect()
    };
    format!("{}.{};1", clean(stem, 8), clean(ext, 3)).into_bytes()
}

/// UCS-2 big-endian, as Joliet writes names.
fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// A directory record.
fn record(name: &[u8], extent: usize, size: usize, dir: bool) -> Vec<u8> {
    let len = 33 + name.len() + (name.len() + 1) % 2;
    let mut r = vec![0u8; len];
    r[0] = len as u8;
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(size));
    // 2000-01-01 00:00:00 UTC: a fixed time, so the image is the same for
    // the same files.
    r[18..25].copy_from_slice(&[100, 1, 1, 0, 0, 0, 0]);
    r[25] = if dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = name.len() as u8;
    r[33..33 + name.len()].copy_from_slice(name);
    r
}

/// The path table of a tree that has only its root.
fn path_table(root: usize, little: bool) -> Vec<u8> {
    let mut t = vec![1u8, 0];
    let at = root as u32;
    t.extend(if little {
        at.to_le_bytes()
    } else {
        at.to_be_bytes()
    });
    t.extend(if little {
        1u16.to_le_bytes()
    } else {
        1u16.to_be_bytes()
    });
    t.extend([0u8, 0]);
    t
}

/// A primary (type 1) or Joliet supplementary (type 2) descriptor.
fn descriptor(
    kind: u8,
    label: &[u8],
    total: usize,
    tables: (usize, usize),
    root: usize,
    joliet: bool,
) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = kind;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let blank = |d: &mut [u8], from: usize, to: usize| {
        for (i, b) in d[from..to].iter_mut().enumerate() {
            *b = if joliet && i % 2 == 0 { 0 } else { b' ' };
        }
    };
    blank(&mut d, 8, 72);
    d[40..40 + label.len()].copy_from_slice(label);
    d[80..88].copy_from_slice(&both32(total));
    if joliet {
        d[88..91].copy_from_slice(b"%/E");
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(10));
    d[140..144].copy_from_slice(&(tables.0 as u32).to_le_bytes());
    d[148..152].copy_from_slice(&(tables.1 as u32).to_be_bytes());
    let r = record(&[0], root, SECTOR, true);
    d[156..156 + r.len()].copy_from_slice(&r);
    blank(&mut d, 190, 813);
    for at in [813, 830, 847, 864] {
        let date: &[u8; 16] = if at == 847 {
            b"0000000000000000"
        } else {
            b"2000010100000000"
        };
        d[at..at + 16].copy_from_slice(date);
    }
    d[881] = 1;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_names(img: &[u8], root: usize, joliet: bool) -> Vec<String> {
        let dir = &img[root * SECTOR..(root + 1) * SECTOR];
        let mut at = 0;
        let mut names = Vec::new();
        while at < dir.len() && dir[at] != 0 {
            let len = dir[at] as usize;
            let n = dir[at + 32] as usize;
            let raw = &dir[at + 33..at + 33 + n];
            if raw != [0] && raw != [1] {
                names.push(if joliet {
                    let units: Vec<u16> = raw
                        .chunks(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16(&units).expect("UCS-2")
                } else {
                    String::from_utf8_lossy(raw).into_owned()
                });
            }
            at += len;
        }
        names
    }

    #[test]
    fn a_seed_image_has_both_trees_its_label_and_its_files_data() {
        let files: [(&str, &[u8]); 3] = [
            ("user-data", b"#cloud-config\n{}"),
            ("meta-data", b"{\"instance-id\": \"x\"}"),
            ("network-config", &[b'n'; 3000]),
        ];
        let img = image("cidata", &files).expect("image");
        assert_eq!(img.len() % SECTOR, 0);
        assert_eq!(&img[PVD * SECTOR + 1..PVD * SECTOR + 6], b"CD001");
        assert_eq!(&img[PVD * SECTOR + 40..PVD * SECTOR + 46], b"cidata");
        assert_eq!(
            &img[(PVD + 1) * SECTOR + 88..(PVD + 1) * SECTOR + 91],
            b"%/E"
        );
        assert_eq!(img[(PVD + 2) * SECTOR], 255);
        let size = u32::from_le_bytes(
            img[PVD * SECTOR + 80..PVD * SECTOR + 84]
                .try_into()
                .expect("4"),
        );
        assert_eq!(size as usize * SECTOR, img.len());
        assert_eq!(
            root_names(&img, 24, true),
            ["meta-data", "network-config", "user-data"]
        );
        assert_eq!(
            root_names(&img, 23, false),
            ["META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1"]
        );
        // network-config takes two sectors; user-data's bytes are where its record says.
        let at = FIRST_DATA + 1 + 2;
        assert_eq!(&img[at * SECTOR..at * SECTOR + 13], b"#cloud-config");
        // The same files make the same image.
        assert_eq!(image("cidata", &files).expect("again"), img);
    }

    #[test]
    fn bad_labels_and_names_are_refused() {
        assert!(matches!(image("CIDATA", &[]), Err(IsoError::Label(_))));
        assert!(matches!(
            image("cidata", &[("../x", b"")]),
            Err(IsoError::Name(_))
        ));
        assert!(matches!(
            image("cidata", &[("a b", b"")]),
            Err(IsoError::Name(_))
        ));
    }
}
