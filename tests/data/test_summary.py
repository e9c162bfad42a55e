from neuroflow.data import resolve_task
from neuroflow.data.summary import format_summary, main, summarize_task


def test_summary_of_a_task(real_data_dir, capsys):
    row = summarize_task(resolve_task("sms_spam"), real_data_dir)
    assert row["splits"]["test"] == {"size": 557, "class_counts": [483, 74]}
    assert sum(sum(s["class_counts"]) for s in row["splits"].values()) == 5574
    table = format_summary([row])
    assert "| sms_spam | text_classification | 2 | 4460 | 557 | 557 | 0.134-0.866 | accuracy, f1 |" in table
    main(["trec", "--data_dir", real_data_dir])
    assert "| trec | text_classification | 6 | 4907 | 545 | 500 |" in capsys.readouterr().out
