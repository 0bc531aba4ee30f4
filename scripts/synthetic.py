from wordepth.cli.synthetic import main

if __name__ == "__main__":
    main()
