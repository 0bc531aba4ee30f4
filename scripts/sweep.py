from wordepth.cli.sweep import main

if __name__ == "__main__":
    main()
