fn main() {
    std::process::exit(caravan::cli::main());
}
