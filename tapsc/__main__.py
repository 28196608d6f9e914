from tapsc.cli import main

main()
