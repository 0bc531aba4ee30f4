from wordepth.cli.caption import main

if __name__ == "__main__":
    main()
