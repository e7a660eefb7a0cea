from keyforge.entry import main

main()
