//! The generated C header `include/zus_api.h` against the Rust ABI.
//!
//! 1. The header and the layout table (`c_header/layout.rs`) are what `zus-api-cgen` generates
//!    from `src/` now: a change to the ABI without regenerating fails here. `ZUS_BLESS=1`
//!    rewrites both (or run `cargo run -p zus-api-cgen`).
//! 2. A C file `#include`s the header and `_Static_assert`s every struct's size and alignment,
//!    every field's offset and every constant's value, with the values Rust computes
//!    (`size_of`, `align_of`, `offset_of!`, the constants themselves); `cc` must compile it.

#[rustfmt::skip]
#[path = "c_header/layout.rs"]
mod layout;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn api_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn test_c_header_is_up_to_date() {
    let api = api_dir();
    let generated = zus_api_cgen::generate(&api.join("src")).unwrap_or_else(|e| panic!("zus-api-cgen: {e}"));
    let bless = std::env::var_os("ZUS_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (path, text) in generated.files(&api) {
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old == text {
            continue;
        }
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
            eprintln!("blessed {}", path.display());
        } else {
            let line = old
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(old.lines().count().min(text.lines().count()));
            stale.push(format!("{} (first difference at line {})", path.display(), line + 1));
        }
    }
    assert!(
        stale.is_empty(),
        "the generated C ABI is out of date with zus-api/src: {}.\nRegenerate with `cargo run -p zus-api-cgen` or `ZUS_BLESS=1 cargo test -p zus-api --test c_header`, then review and commit the diff.",
        stale.join(", ")
    );
}

/// The C file of static assertions, built from the Rust layout table.
fn static_asserts() -> String {
    let mut c = String::from("#include <stddef.h>\n#include \"zus_api.h\"\n\n");
    for s in layout::STRUCTS {
        let n = s.c_name;
        let _ = writeln!(c, "_Static_assert(sizeof({n}) == {}, \"size of {n}\");", s.size);
        let _ = writeln!(c, "_Static_assert(_Alignof({n}) == {}, \"alignment of {n}\");", s.align);
        for (f, off) in s.fields {
            let _ = writeln!(c, "_Static_assert(offsetof({n}, {f}) == {off}, \"offset of {n}.{f}\");");
        }
    }
    for (name, v) in layout::VALUES {
        let lit = if *v < 0 { format!("({v}LL)") } else { format!("{v}ULL") };
        let _ = writeln!(c, "_Static_assert({name} == {lit}, \"value of {name}\");");
    }
    for (name, bytes) in layout::STRINGS {
        let len = bytes.len() - usize::from(bytes.last() == Some(&0));
        let _ = writeln!(c, "_Static_assert(sizeof({name}) == {}, \"length of {name}\");", len + 1);
    }
    c
}

fn cc(dir: &Path, file: &str, extra: &[&str]) -> std::process::Output {
    Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_owned()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
        .arg(api_dir().join("include"))
        .args(extra)
        .arg(dir.join(file))
        .output()
        .expect("running cc (a C compiler is needed to link Rust on Linux anyway)")
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zus-c-header-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn test_c_header_layouts_match_rust() {
    assert!(layout::STRUCTS.len() >= 30, "the layout table lost its structs");
    let dir = scratch("asserts");
    std::fs::write(dir.join("asserts.c"), static_asserts()).unwrap();
    let out = cc(&dir, "asserts.c", &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "the C header disagrees with Rust:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn test_c_header_catches_a_wrong_offset() {
    // The check itself must bite: one offset off by 4 fails to compile.
    let good = static_asserts();
    let needle = "offsetof(struct zus_op_header, ticket) == 56";
    assert!(good.contains(needle), "no assertion for zus_op_header.ticket");
    let dir = scratch("negative");
    std::fs::write(dir.join("bad.c"), good.replace(needle, "offsetof(struct zus_op_header, ticket) == 60")).unwrap();
    let out = cc(&dir, "bad.c", &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "a wrong offset compiled");
    assert!(String::from_utf8_lossy(&out.stderr).contains("offset of struct zus_op_header.ticket"));
}
