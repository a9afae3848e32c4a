//! Stand-alone entry to `zufs bench` (the `zufs` CLI's `bench` subcommand runs the same code).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "zufs-bench")]
struct Cli {
    #[command(flatten)]
    bench: zufs_bench::BenchArgs,
    /// Only redraw results.md and the plots from an earlier run's results.json in --out.
    #[arg(long)]
    rerender: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let bin_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(std::path::Path::to_path_buf)).unwrap_or_default();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let result = if cli.rerender {
        zufs_bench::rerender(&cli.bench.out)
    } else {
        cli.bench.plan(&bin_dir).and_then(|p| zufs_bench::run(&p, &command))
    };
    match result {
        Ok(r) => {
            let configs: Vec<_> = cli.bench.configs.iter().filter_map(|c| zufs_bench::configs::Config::parse(c)).collect();
            println!("{}", zufs_bench::report::markdown(&r.cells, &configs, &cli.bench.threads));
            println!("results in {}", cli.bench.out.display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zufs bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
