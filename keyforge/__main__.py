from keyforge.cli import main

main()
