from wordepth.cli.zeroshot import main

if __name__ == "__main__":
    main()
