//! `hearty-bench`: the benchmark of BENCHMARKS.md, a crate of its own so
//! that the product binary does not link the load generator.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = hearty_bench::BenchArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_target(false)
        // stdout is the report's (`--json`).
        .with_writer(std::io::stderr)
        .init();
    let json = args.json;
    if let Some(orders) = args.history {
        let report = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(hearty_bench::run_history(&args, orders)));
        return match report {
            Ok(v) => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hearty-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.memory_only {
        let report = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(hearty_bench::run_memory(&args)));
        return match report {
            Ok(v) if json => {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                std::process::ExitCode::SUCCESS
            }
            Ok(v) => {
                print!(
                    "{}",
                    hearty_bench::memory_summary(&v["memory"], &v["recovery"])
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hearty-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let report = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(hearty_bench::run(args)));
    match report {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            std::process::ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", hearty_bench::summary(&report));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hearty-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
