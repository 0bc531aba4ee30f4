from wordepth.cli.extract import main

if __name__ == "__main__":
    main()
