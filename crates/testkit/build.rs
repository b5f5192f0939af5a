//! Fingerprints the migrations for the template database's name.
//!
//! The template is named after a hash of every file under `migrations/`, so changing, adding or removing a
//! migration gives a new template instead of reusing a stale one. The hash is computed here, at build time, from
//! the same files `embed_migrations!` compiles in, so the name and the migrations applied can never disagree.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
    println!("cargo::rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect_files(&root, &mut files)?;
    // Sorted, so the hash does not depend on the order the file system lists entries in.
    files.sort();
    let mut hash = Fnv1a::new();
    for file in &files {
        let relative = file.strip_prefix(&root)?;
        hash.write(relative.to_string_lossy().as_bytes());
        hash.write(&[0]);
        hash.write(&fs::read(file)?);
        hash.write(&[0]);
    }
    // 48 bits: ample to tell migration sets apart on one developer's server, and a short database name.
    println!("cargo::rustc-env=UM_MIGRATIONS_HASH={:012x}", hash.finish() >> 16);
    Ok(())
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

/// 64-bit FNV-1a: tiny and dependency-free, which is all a cache key needs (this is not a security boundary).
struct Fnv1a(u64);

impl Fnv1a {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    const fn finish(&self) -> u64 {
        self.0
    }
}
