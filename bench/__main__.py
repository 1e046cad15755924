from inferstack.bench.cli import main

main()
