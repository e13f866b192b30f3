from mnist_lightning.commands import main

main()
