//! `cargo run -p zus-api-cgen [-- --check]`: regenerates `zus-api/include/zus_api.h` and the
//! layout table of its test (`zus-api/tests/c_header/layout.rs`) from `zus-api/src`. With
//! `--check` it writes nothing and exits 1 when either file is out of date.

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().skip(1).any(|a| a == "--check");
    let api = zus_api_cgen::api_dir();
    let out = match zus_api_cgen::generate(&api.join("src")) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("zus-api-cgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = false;
    for (path, text) in out.files(&api) {
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old == text {
            continue;
        }
        if check {
            eprintln!("zus-api-cgen: {} is out of date", path.display());
            stale = true;
        } else if let Err(e) =
            std::fs::create_dir_all(path.parent().unwrap_or(&api)).and_then(|()| std::fs::write(&path, text))
        {
            eprintln!("zus-api-cgen: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
