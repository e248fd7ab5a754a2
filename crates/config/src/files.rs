//! Files a config names (the config itself, certificates, keys, secrets, key sets): read only
//! when they are regular files of a sane size, so a path to `/dev/zero`, a FIFO or a huge file
//! is an error message rather than a process that grows until the OS steps in.

use std::io::Read;
use std::path::Path;

/// The largest config file we read.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;
/// The largest certificate, key, secret or key-set file we read.
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// Why a named file cannot be used, in words for a problem message.
pub fn check(path: &Path, max: u64) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("file {shown} does not exist"))
        }
        Err(e) => Err(format!("cannot read {shown}: {e}")),
        Ok(m) if m.is_dir() => Err(format!("{shown} is a directory, not a file")),
        Ok(m) if !m.is_file() => Err(format!("{shown} is not a regular file")),
        Ok(m) if m.len() > max => Err(format!("{shown} is larger than {max} bytes")),
        Ok(_) => Ok(()),
    }
}

/// The file's bytes, if it is a regular file of at most `max` bytes (checked again while
/// reading: a file may grow between the check and the read).
pub fn read(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    check(path, max).map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(out)
}

/// [`read`] as UTF-8 text.
pub fn read_to_string(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_a_sane_size_are_read() {
        let dir = std::env::temp_dir().join(format!("tollgate-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("small");
        std::fs::write(&f, b"0123456789").expect("write");
        assert_eq!(read(&f, 10).expect("read"), b"0123456789");
        let e = read(&f, 9).expect_err("too large");
        assert!(e.to_string().contains("larger than 9"), "{e}");
        assert!(check(&dir, 10).expect_err("dir").contains("is a directory"));
        assert!(
            check(&dir.join("none"), 10)
                .expect_err("none")
                .contains("does not exist")
        );
        let e = read(Path::new("/dev/zero"), MAX_SECRET_BYTES).expect_err("device");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
