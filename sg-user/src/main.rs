use clap::Parser;

fn main() {
    slowgate::logging::init();
    let cli = slowgate::cli::Cli::parse();
    if let Err(e) = slowgate::cli::execute(&cli) {
        eprintln!("slowgate: {e:#}");
        std::process::exit(1);
    }
}
