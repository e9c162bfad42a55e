from neuroflow.data.summary import main

main()
