from govpass.cli import main

main()
