from wordepth.cli.download import main

if __name__ == "__main__":
    main()
