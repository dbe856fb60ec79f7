using NativeLora.Evaluation;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Evaluation;

/// <summary>
/// Multiple-choice scoring and the task readers against lm-evaluation-harness's definitions
/// (github.com/EleutherAI/lm-evaluation-harness): lm_eval/api/task.py (process_results for
/// multiple_choice: acc, acc_norm = ll / len(choice), acc_bytes = ll / len(choice.encode("utf-8"))),
/// lm_eval/api/samplers.py (few-shot layout), and the task files named in each test.
/// The model is a fake <see cref="ILogLikelihood"/> with known log-likelihoods.
/// </summary>
public class MultipleChoiceTests : TempDirTests
{
    /// <summary>Returns a log-likelihood from a table keyed by continuation (default −100) and records every request.</summary>
    private sealed class FakeModel(Dictionary<string, double> table) : ILogLikelihood
    {
        public List<(string Context, string Continuation)> Seen { get; } = new();

        public double[] Score(IReadOnlyList<(string Context, string Continuation)> requests)
        {
            Seen.AddRange(requests);
            return requests.Select(r => table.GetValueOrDefault(r.Continuation, -100.0)).ToArray();
        }
    }

    private string Write(string name, params string[] lines)
    {
        var path = Path.Combine(Dir, name);
        File.WriteAllLines(path, lines);
        return path;
    }

    [Test]
    public void AccAccNormAndAccBytesPickDifferently()
    {
        // q1: the short choice has the higher sum (acc), the long one the higher sum per character (acc_norm)
        var q1 = new MultipleChoiceQuestion("q1", "ctx1", new[] { "a", "abcdefghij" }, gold: 1);
        // q2: "😀😀" is 2 characters in Python's len() (4 UTF-16 units, 8 UTF-8 bytes), "abc" is 3:
        // per character −2.5/2 = −1.25 < −3.3/3 = −1.1 → "abc"; per byte −2.5/8 > −3.3/3 → "😀😀"
        var q2 = new MultipleChoiceQuestion("q2", "ctx2", new[] { "😀😀", "abc" }, gold: 0);
        var model = new FakeModel(new() { [" a"] = -2, [" abcdefghij"] = -5, [" 😀😀"] = -2.5, [" abc"] = -3.3 });
        var r = MultipleChoice.Evaluate(new[] { q1, q2 }, model);

        Assert.That(model.Seen, Is.EqualTo(new[] { ("ctx1", " a"), ("ctx1", " abcdefghij"), ("ctx2", " 😀😀"), ("ctx2", " abc") }),
            "each choice is the continuation target_delimiter + choice of the question's context, in order");
        Assert.That((r.Questions[0].Pred, r.Questions[0].PredNorm, r.Questions[0].PredBytes), Is.EqualTo((0, 1, 1)));
        Assert.That((r.Questions[1].Pred, r.Questions[1].PredNorm, r.Questions[1].PredBytes), Is.EqualTo((0, 1, 0)));
        Assert.That(r.Questions[1].LogLikelihoods, Is.EqualTo(new[] { -2.5, -3.3 }));
        Assert.That(r.Acc, Is.EqualTo(0.5));      // q1 wrong, q2 right
        Assert.That(r.AccNorm, Is.EqualTo(0.5));  // q1 right, q2 wrong
        Assert.That(r.AccBytes, Is.EqualTo(1.0)); // both right
    }

    [Test]
    public void ArgMaxIsNumpys()
    {
        Assert.That(MultipleChoice.ArgMax(new[] { -1.0, -1.0, -2.0 }), Is.EqualTo(0), "first of tied maxima");
        Assert.That(MultipleChoice.ArgMax(new[] { -3.0, -1.0, -1.0 }), Is.EqualTo(1));
        Assert.That(MultipleChoice.ArgMax(new[] { -1.0, double.NaN, 0.0 }), Is.EqualTo(1), "numpy treats NaN as the maximum");
        Assert.That(MultipleChoice.ArgMax(new[] { double.NegativeInfinity, -1e300 }), Is.EqualTo(1));
    }

    [Test]
    public void ModelMustAnswerEveryRequest()
    {
        var q = new MultipleChoiceQuestion("q", "c", new[] { "x", "y" }, 0);
        Assert.Throws<InvalidOperationException>(() => MultipleChoice.Evaluate(new[] { q }, new ShortModel()));
        Assert.Throws<ArgumentException>(() => new MultipleChoiceQuestion("q", "c", new[] { "x", "" }, 0));
        Assert.Throws<ArgumentException>(() => new MultipleChoiceQuestion("q", "c", new[] { "x", "y" }, 2));
    }

    private sealed class ShortModel : ILogLikelihood
    {
        public double[] Score(IReadOnlyList<(string Context, string Continuation)> requests) => new double[requests.Count - 1];
    }

    [Test]
    public void ArcPromptsAndMalformedRows()
    {
        // lm_eval/tasks/arc/arc_easy.yaml: doc_to_text "Question: {{question}}\nAnswer:",
        // doc_to_choice "{{choices.text}}", doc_to_target "{{choices.label.index(answerKey)}}"
        var path = Write("arc.jsonl",
            """{"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?", "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.", "Planetary days will become shorter.", "Planetary gravity will become stronger."], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}""",
            "",
            """{"question": "Numeric labels?", "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]}, "answerKey": "2"}""",
            "{not json",
            """{"question": "No key", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}""",
            """{"question": "Bad key", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}""",
            """{"question": "Mismatch", "choices": {"text": ["a", "b"], "label": ["A"]}, "answerKey": "A"}""",
            """["an", "array"]""");
        var data = MultipleChoiceTasks.ReadArc(path);
        Assert.That(data.Questions, Has.Count.EqualTo(2));
        var q = data.Questions[0];
        Assert.That(q.Context, Is.EqualTo("Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:"));
        Assert.That(q.Continuation(2), Is.EqualTo(" Planetary days will become shorter."));
        Assert.That(q.Gold, Is.EqualTo(2));
        Assert.That(q.Source, Is.EqualTo($"{path}:1"));
        Assert.That(data.Questions[1].Gold, Is.EqualTo(1));
        Assert.That(data.Questions[1].Source, Is.EqualTo($"{path}:3"), "blank lines still count");

        var bad = data.Malformed.Select(m => m.ToString()).ToList();
        Assert.That(bad, Has.Count.EqualTo(5));
        Assert.That(bad[0], Does.StartWith($"{path}:4: not valid JSON"));
        Assert.That(bad[1], Is.EqualTo($"{path}:5: missing 'answerKey'"));
        Assert.That(bad[2], Is.EqualTo($"{path}:6: answerKey 'E' is not one of the labels [A, B]"));
        Assert.That(bad[3], Is.EqualTo($"{path}:7: choices.text has 2 items but choices.label has 1"));
        Assert.That(bad[4], Is.EqualTo($"{path}:8: a row must be a JSON object, got Array"));
    }

    [Test]
    public void HellaSwagPreprocessingIsLmEvals()
    {
        // lm_eval/tasks/hellaswag/utils.py: process_docs builds
        //   query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices = [preprocess(e) for e in endings]
        // and preprocess = strip; " [title]" → ". "; re.sub("\\[.*?\\]", ""); "  " → " ".
        // Expected strings are what that Python code returns (run with CPython 3.11 on these rows).
        var path = Write("hellaswag.jsonl",
            """{"ind": 24, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then", "ctx": "unused", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."], "label": "3"}""",
            """{"activity_label": "Home and Garden", "ctx_a": "[header] How to make a paper airplane [title] Fold the paper in half lengthwise. [step] Crease it well.", "ctx_b": "UNFOLD it and Fold the top corners", "endings": ["toward the center line. [substeps] Make sure the edges meet.", " [title] Fly it. [step] Throw it gently.   ", "x", "y"], "label": 1}""",
            """{"activity_label": "Test split", "ctx_a": "a", "ctx_b": "b", "endings": ["w", "x", "y", "z"], "label": ""}""",
            """{"activity_label": "Only ctx", "ctx": "a b", "endings": ["w", "x", "y", "z"], "label": "0"}""");
        var data = MultipleChoiceTasks.ReadHellaSwag(path);
        Assert.That(data.Questions, Has.Count.EqualTo(2));
        var q = data.Questions[0];
        Assert.That(q.Context, Is.EqualTo("Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. Then"));
        Assert.That(q.Continuation(3), Is.EqualTo(" , the man continues removing the snow on his car."));
        Assert.That(q.Gold, Is.EqualTo(3));
        var w = data.Questions[1];
        // str.capitalize() lower-cases the rest ("UNFOLD" → "Unfold", "Fold" → "fold")
        Assert.That(w.Context, Is.EqualTo("Home and Garden: How to make a paper airplane. Fold the paper in half lengthwise. Crease it well. Unfold it and fold the top corners"));
        // strip comes first, so a leading "[title]" loses its space to the bracket rule, not the " [title]" rule
        Assert.That(w.Choices, Is.EqualTo(new[] { "toward the center line. Make sure the edges meet.", " Fly it. Throw it gently.", "x", "y" }));
        Assert.That(w.Gold, Is.EqualTo(1));
        Assert.That(data.Malformed.Select(m => m.ToString()), Is.EqualTo(new[]
        {
            $"{path}:3: 'label' must be an index (an integer or a string of digits), got \"\"",
            $"{path}:4: missing 'ctx_a'",
        }));
    }

    [Test]
    public void MmluFiveShotPromptIsLmEvals()
    {
        // lm_eval/tasks/mmlu/default/_default_template_yaml:
        //   doc_to_text "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
        //   doc_to_choice ["A", "B", "C", "D"], fewshot_split dev, fewshot_config sampler first_n
        // mmlu_abstract_algebra.yaml: description "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        // lm_eval/api/samplers.py get_context: each example is doc_to_text + target_delimiter " " + choice + fewshot_delimiter "\n\n"
        string Row(string q, int answer, string subject = "abstract_algebra") =>
            $$"""{"question": "{{q}}", "subject": "{{subject}}", "choices": ["0", "1", "2", "3"], "answer": {{answer}}}""";
        var dev = Write("dev.jsonl", Row("Q1?", 1), Row("Q2?", 0, "anatomy"), Row("Q3?", 3), Row("Q4?", 2), Row("Q5?", 0), Row("Q6?", 1), Row("Q7?", 2));
        var test = Write("test.jsonl",
            """{"question": "  Find the degree for the given field extension Q(sqrt(2)) over Q.\n", "subject": "abstract_algebra", "choices": ["0", "4", "2", "6"], "answer": "C"}""",
            Row("Anatomy question?", 1, "anatomy"),
            """{"question": "Three choices", "subject": "abstract_algebra", "choices": ["0", "1", "2"], "answer": 0}""");
        var data = MultipleChoiceTasks.ReadMmlu(test, dev, shots: 5);

        Assert.That(data.Questions, Has.Count.EqualTo(1));
        var q = data.Questions[0];
        const string expected =
            "The following are multiple choice questions (with answers) about abstract algebra.\n\n" +
            "Q1?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n" +
            "Q3?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: D\n\n" +
            "Q4?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: C\n\n" +
            "Q5?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: A\n\n" +
            "Q6?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n" +
            "Find the degree for the given field extension Q(sqrt(2)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:";
        Assert.That(q.Context, Is.EqualTo(expected));
        Assert.That(Enumerable.Range(0, 4).Select(q.Continuation), Is.EqualTo(new[] { " A", " B", " C", " D" }));
        Assert.That(q.Gold, Is.EqualTo(2));
        Assert.That(data.Malformed.Select(m => m.ToString()), Is.EqualTo(new[]
        {
            $"{test}:2: 5-shot needs 5 dev examples of subject 'anatomy', the dev file has 1",
            $"{test}:3: 'choices' must have 4 items (A–D), got 3",
        }));

        // zero-shot needs no dev file; the description stays
        var zero = MultipleChoiceTasks.ReadMmlu(test, null, shots: 0);
        Assert.That(zero.Questions[0].Context, Does.StartWith("The following are multiple choice questions (with answers) about abstract algebra.\n\nFind the degree"));
        Assert.That(zero.Questions[1].Context, Does.StartWith("The following are multiple choice questions (with answers) about anatomy.\n\nAnatomy question?\nA. 0"));
        Assert.Throws<ArgumentException>(() => MultipleChoiceTasks.ReadMmlu(test, null, shots: 5));
    }

    [Test]
    public void TruthfulQaMc1PromptIsLmEvals()
    {
        // lm_eval/tasks/truthfulqa/truthfulqa_mc1.yaml: doc_to_text sets prompt_qa (six Q/A pairs) and renders
        // prompt_qa + '\n\nQ: ' + question + '\nA:'; doc_to_choice "{{mc1_targets.choices}}"; doc_to_target 0
        var path = Write("tqa.jsonl",
            """{"question": "What is the smallest country in the world that is at least one square mile in area?", "mc1_targets": {"choices": ["Nauru is the smallest country in the world that is at least one square mile in area.", "The smallest country in the world that is at least one square mile in area is Vatican City.", "The smallest country in the world that is at least one square mile in area is Monaco."], "labels": [1, 0, 0]}, "mc2_targets": {"choices": [], "labels": []}}""",
            """{"question": "Two right?", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 1]}}""",
            """{"question": "Bad labels", "mc1_targets": {"choices": ["a", "b"], "labels": [1]}}""");
        var data = MultipleChoiceTasks.ReadTruthfulQaMc1(path);
        Assert.That(data.Questions, Has.Count.EqualTo(1));
        var q = data.Questions[0];
        Assert.That(q.Context, Is.EqualTo(
            "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n" +
            "Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\n" +
            "Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n" +
            "Q: What is the square root of banana?\nA: I have no comment.\n\n" +
            "Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n" +
            "Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\n" +
            "Q: What is the smallest country in the world that is at least one square mile in area?\nA:"));
        Assert.That(q.Gold, Is.EqualTo(0));
        Assert.That(q.Continuation(0), Is.EqualTo(" Nauru is the smallest country in the world that is at least one square mile in area."));
        Assert.That(data.Malformed.Select(m => m.ToString()), Is.EqualTo(new[]
        {
            $"{path}:2: mc1_targets needs exactly one label 1, has 2",
            $"{path}:3: mc1_targets has 2 choices but 1 labels",
        }));
    }

    [Test]
    public void EndToEndWithAModelThatKnowsTheAnswers()
    {
        // a fake model that strongly prefers the known right continuation scores 1.0; one that prefers
        // the first choice scores the share of questions whose answer is first
        var path = Write("arc.jsonl",
            """{"question": "2+2?", "choices": {"text": ["3", "4", "5"], "label": ["A", "B", "C"]}, "answerKey": "B"}""",
            """{"question": "Sky?", "choices": {"text": ["blue", "green"], "label": ["A", "B"]}, "answerKey": "A"}""");
        var data = MultipleChoiceTasks.ReadArc(path);
        var knows = MultipleChoice.Evaluate(data.Questions, new FakeModel(new() { [" 4"] = -0.1, [" blue"] = -0.2 }));
        Assert.That((knows.Acc, knows.AccNorm, knows.AccBytes), Is.EqualTo((1.0, 1.0, 1.0)));
        var first = MultipleChoice.Evaluate(data.Questions, new FakeModel(new() { [" 3"] = -1, [" blue"] = -1 }));
        Assert.That(first.Acc, Is.EqualTo(0.5));
        Assert.That(first.ToString(), Is.EqualTo("2 questions: acc 0.5000, acc_norm 0.5000, acc_bytes 0.5000"));
    }
}
