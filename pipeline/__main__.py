from pipeline.cli import main_config, run

run(main_config)
