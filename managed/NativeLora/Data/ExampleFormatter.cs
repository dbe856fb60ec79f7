using NativeLora.Text;

namespace NativeLora.Data;

/// <summary>
/// Turns conversations and plain texts into token ids with per-token loss masks. Conversations
/// go through the model's chat template. The response mask is found by rendering prefixes: the
/// text of assistant turn i is what rendering messages[..i+1] adds after rendering messages[..i]
/// with the generation prompt; the pieces are encoded one by one (boundaries fall on template
/// text, so BPE merges never cross them). Without a chat template, Alpaca's prompt format is used.
/// </summary>
public sealed class ExampleFormatter
{
    private readonly HfTokenizer _tok;
    private readonly ChatTemplate? _template;

    public bool TrainOnPrompt { get; }

    public const string AlpacaPrompt = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{0}\n\n### Response:\n";

    public ExampleFormatter(HfTokenizer tokenizer, bool trainOnPrompt)
    {
        _tok = tokenizer;
        TrainOnPrompt = trainOnPrompt;
        _template = tokenizer.ChatTemplate is string t ? new ChatTemplate(t) : null;
    }

    /// <summary>No token covers more characters of text than this (HfTokenizer.MaxTokenChars).</summary>
    public int MaxTokenChars => _tok.MaxTokenChars;

    /// <summary>Characters of text handed to the tokenizer so far: the work a row cost (tests bound it).</summary>
    public long CharactersTokenized { get; private set; }

    private int[] Encode(string text, bool addSpecialTokens)
    {
        CharactersTokenized += text.Length;
        return _tok.Encode(text, addSpecialTokens);
    }

    /// <summary>Continued pre-training: every token is a target; BOS/EOS as the tokenizer adds them, EOS appended.</summary>
    public TrainingExample FromText(string text)
    {
        var ids = Encode(text, addSpecialTokens: true).ToList();
        if (_tok.EosId is int eos && (ids.Count == 0 || ids[^1] != eos)) ids.Add(eos);
        return new TrainingExample(ids.ToArray(), Enumerable.Repeat(true, ids.Count).ToArray());
    }

    /// <summary>
    /// A conversation; loss on assistant turns only unless TrainOnPrompt. The whole conversation is
    /// rendered once; assistant turn i starts where rendering messages[..i] with the generation prompt
    /// ends, and runs to where rendering messages[..i+1] stops agreeing with the whole; it is cut after
    /// its first special token (the end-of-turn marker: &lt;|eot_id|&gt;, &lt;|im_end|&gt;, &lt;/s&gt;),
    /// so templates that always append an assistant header (early Llama 3) are handled too.
    /// </summary>
    public TrainingExample FromMessages(IReadOnlyList<ChatMessage> messages)
    {
        if (!messages.Any(m => m.Role == "assistant")) throw new FormatException("the conversation has no assistant turn to learn from");
        if (_template == null) return FromAlpacaStyle(messages);
        var final = _template.Render(messages, addGenerationPrompt: false, _tok.BosToken, _tok.EosToken);
        var ids = new List<int>();
        var mask = new List<bool>();
        int pos = 0;
        void Append(string piece, bool trainable)
        {
            if (piece.Length == 0) return;
            var t = Encode(piece, addSpecialTokens: false);
            ids.AddRange(t);
            mask.AddRange(Enumerable.Repeat(trainable || TrainOnPrompt, t.Length));
        }
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            var prompt = _template.Render(messages.Take(i).ToList(), addGenerationPrompt: true, _tok.BosToken, _tok.EosToken);
            var upTo = _template.Render(messages.Take(i + 1).ToList(), addGenerationPrompt: false, _tok.BosToken, _tok.EosToken);
            if (!final.StartsWith(prompt, StringComparison.Ordinal) || prompt.Length < pos)
                throw new FormatException($"the chat template does not render turn {i + 1} as a prefix of the conversation, so its response cannot be located");
            int end = 0;
            while (end < upTo.Length && end < final.Length && upTo[end] == final[end]) end++;
            if (end <= prompt.Length) throw new FormatException($"assistant turn {i + 1} renders as nothing");
            Append(final[pos..prompt.Length], trainable: false);
            var span = Encode(final[prompt.Length..end], addSpecialTokens: false);
            int cut = span.Length;
            for (int k = 1; k < span.Length; k++)
                if (IsSpecial(span[k])) { cut = k + 1; break; }
            for (int k = 0; k < span.Length; k++)
            {
                ids.Add(span[k]);
                mask.Add(k < cut || TrainOnPrompt);
            }
            pos = end;
        }
        Append(final[pos..], trainable: false);
        if (MissingBos(ids) is int bos)
        {
            ids.Insert(0, bos);
            mask.Insert(0, false);
        }
        return new TrainingExample(ids.ToArray(), mask.ToArray());
    }

    /// <summary>The BOS id when add_bos_token asks for one and the ids (of rendered template text) do not start with it.</summary>
    private int? MissingBos(IReadOnlyList<int> ids) =>
        _tok.BosId is int bos && _tok.AddBosToken == true && (ids.Count == 0 || ids[0] != bos) ? bos : null;

    /// <summary>
    /// The chat template's end-of-turn token (&lt;|eot_id|&gt;, &lt;|im_end|&gt;, &lt;end_of_turn&gt;, &lt;|end|&gt;, &lt;/s&gt;): the
    /// special token that ends the assistant's turn of a rendered one-turn conversation, located as
    /// <see cref="FromMessages"/> locates it for training. Null without a chat template, or when the
    /// template ends the turn with plain text only.
    /// </summary>
    public int? EndOfTurnId()
    {
        if (_template == null) return null;
        if (TrainOnPrompt) return new ExampleFormatter(_tok, trainOnPrompt: false).EndOfTurnId();
        var turn = FromMessages(new[] { new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello") });
        int last = Array.LastIndexOf(turn.Trainable, true);
        return last > 0 && IsSpecial(turn.Ids[last]) ? turn.Ids[last] : null;
    }

    private readonly Dictionary<int, bool> _special = new();

    // a special token decodes to nothing when special tokens are skipped, and to its text otherwise
    private bool IsSpecial(int id)
    {
        if (!_special.TryGetValue(id, out var s))
            _special[id] = s = _tok.Decode(new[] { id }, skipSpecialTokens: true).Length == 0 && _tok.Decode(new[] { id }, skipSpecialTokens: false).Length > 0;
        return s;
    }

    // Alpaca format for tokenizers without a chat template: prompt, response, EOS (the response and EOS are targets)
    private TrainingExample FromAlpacaStyle(IReadOnlyList<ChatMessage> messages)
    {
        var system = string.Join("\n\n", messages.Where(m => m.Role == "system").Select(m => m.Content));
        var user = string.Join("\n\n", messages.TakeWhile(m => m.Role != "assistant").Where(m => m.Role == "user").Select(m => m.Content));
        var answer = messages.First(m => m.Role == "assistant").Content ?? "";
        var prompt = string.Format(AlpacaPrompt, (system.Length > 0 ? system + "\n\n" : "") + user);
        var p = Encode(prompt, addSpecialTokens: true);
        var r = Encode(answer, addSpecialTokens: false).ToList();
        if (_tok.EosId is int eos) r.Add(eos);
        return new TrainingExample(p.Concat(r).ToArray(), Enumerable.Repeat(TrainOnPrompt, p.Length).Concat(Enumerable.Repeat(true, r.Count)).ToArray());
    }

    /// <summary>
    /// The prompt ids of a conversation (as <see cref="PromptIds"/>) and the token range [Start, End) of its last user
    /// message there: where the rendering up to the message ends, to where the rendering with it ends (its role header and
    /// end-of-turn markers included), counted in tokens of those renderings. Input-drift monitoring averages the model's
    /// hidden states over this range. Without a chat template: the user text inside the Alpaca prompt.
    /// </summary>
    public (int[] Ids, int Start, int End) PromptWithLastUserMessage(IReadOnlyList<ChatMessage> messages)
    {
        var ids = PromptIds(messages);
        int last = -1;
        for (int i = 0; i < messages.Count; i++) if (messages[i].Role == "user") last = i;
        if (last < 0) return (ids, 0, ids.Length); // no user message: the whole prompt
        int Count(string text)
        {
            var t = _tok.Encode(text, addSpecialTokens: false);
            return t.Length + (MissingBos(t) != null ? 1 : 0);
        }
        int start, end;
        if (_template == null)
        {
            var users = messages.Where(m => m.Role == "user").Select(m => m.Content).ToList();
            var before = string.Join("\n\n", users.Take(users.Count - 1).Append(""));
            int open = AlpacaPrompt.IndexOf("{0}", StringComparison.Ordinal);
            start = _tok.Encode(AlpacaPrompt[..open] + before, addSpecialTokens: true).Length;
            end = _tok.Encode(AlpacaPrompt[..open] + before + users[^1], addSpecialTokens: true).Length;
        }
        else
        {
            start = Count(_template.Render(messages.Take(last).ToList(), addGenerationPrompt: false, _tok.BosToken, _tok.EosToken));
            end = Count(_template.Render(messages.Take(last + 1).ToList(), addGenerationPrompt: false, _tok.BosToken, _tok.EosToken));
        }
        end = Math.Min(end, ids.Length);
        start = Math.Clamp(start, 0, Math.Max(0, end - 1));
        return (ids, start, end);
    }

    /// <summary>The prompt of a conversation for generation (chat template with the generation prompt).</summary>
    public int[] PromptIds(IReadOnlyList<ChatMessage> messages)
    {
        if (_template == null)
        {
            var user = string.Join("\n\n", messages.Where(m => m.Role == "user").Select(m => m.Content));
            return Encode(string.Format(AlpacaPrompt, user), addSpecialTokens: true);
        }
        var text = _template.Render(messages, addGenerationPrompt: true, _tok.BosToken, _tok.EosToken);
        var ids = Encode(text, addSpecialTokens: false).ToList();
        if (MissingBos(ids) is int bos) ids.Insert(0, bos);
        return ids.ToArray();
    }
}
