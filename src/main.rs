fn main() -> anyhow::Result<()> {
    hangar_cli::run()
}
