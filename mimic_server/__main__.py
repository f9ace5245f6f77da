from mimic_server.cli import main

main()
