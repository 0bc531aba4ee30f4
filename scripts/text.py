from wordepth.cli.text import main

if __name__ == "__main__":
    main()
