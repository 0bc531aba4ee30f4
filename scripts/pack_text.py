from wordepth.cli.pack_text import main

if __name__ == "__main__":
    main()
