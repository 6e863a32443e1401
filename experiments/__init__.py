"""The study's experiment harness: configs, the fairseq-train runner with its watchdog, the
fairseq log parser, evaluation, data preparation, reports and the end-to-end study steps.
The files in scripts/ are the command-line mains of these modules."""
