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

    public bool HasChatTemplate => _template != null;

    /// <summary>Continued pre-training: every token is a target; BOS/EOS as the tokenizer adds them, EOS appended.</summary>
    public TrainingExample FromText(string text)
    {
        var ids = _tok.Encode(text, addSpecialTokens: true).ToList();
        if (_tok.EosId is int eos && (ids.Count == 0 || ids[^1] != eos)) ids.Add(eos);
        return new TrainingExample(ids.ToArray(), Enumerable.Repeat(true, ids.Count).ToArray());
    }

    /// <summary>A conversation; loss on assistant turns only unless TrainOnPrompt.</summary>
    public TrainingExample FromMessages(IReadOnlyList<ChatMessage> messages)
    {
        if (!messages.Any(m => m.Role == "assistant")) throw new FormatException("the conversation has no assistant turn to learn from");
        if (_template == null) return FromAlpacaStyle(messages);
        var ids = new List<int>();
        var mask = new List<bool>();
        string rendered = "";
        void Append(string piece, bool trainable)
        {
            if (piece.Length == 0) return;
            var t = _tok.Encode(piece, addSpecialTokens: false);
            ids.AddRange(t);
            mask.AddRange(Enumerable.Repeat(trainable || TrainOnPrompt, t.Length));
        }
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            var prompt = _template.Render(messages.Take(i).ToList(), addGenerationPrompt: true, _tok.BosToken, _tok.EosToken);
            var full = _template.Render(messages.Take(i + 1).ToList(), addGenerationPrompt: false, _tok.BosToken, _tok.EosToken);
            if (!prompt.StartsWith(rendered, StringComparison.Ordinal) || !full.StartsWith(prompt, StringComparison.Ordinal))
                throw new FormatException("the chat template does not render conversations as growing prefixes, so responses cannot be located");
            Append(prompt[rendered.Length..], trainable: false);
            Append(full[prompt.Length..], trainable: true);
            rendered = full;
        }
        var all = _template.Render(messages, addGenerationPrompt: false, _tok.BosToken, _tok.EosToken);
        if (all.StartsWith(rendered, StringComparison.Ordinal)) Append(all[rendered.Length..], trainable: false);
        if (_tok.BosId is int bos && _tok.AddBosToken == true && (ids.Count == 0 || ids[0] != bos))
        {
            ids.Insert(0, bos);
            mask.Insert(0, false);
        }
        return new TrainingExample(ids.ToArray(), mask.ToArray());
    }

    // Alpaca format for tokenizers without a chat template: prompt, response, EOS (the response and EOS are targets)
    private TrainingExample FromAlpacaStyle(IReadOnlyList<ChatMessage> messages)
    {
        var system = string.Join("\n\n", messages.Where(m => m.Role == "system").Select(m => m.Content));
        var user = string.Join("\n\n", messages.TakeWhile(m => m.Role != "assistant").Where(m => m.Role == "user").Select(m => m.Content));
        var answer = messages.First(m => m.Role == "assistant").Content ?? "";
        var prompt = string.Format(AlpacaPrompt, (system.Length > 0 ? system + "\n\n" : "") + user);
        var p = _tok.Encode(prompt, addSpecialTokens: true);
        var r = _tok.Encode(answer, addSpecialTokens: false).ToList();
        if (_tok.EosId is int eos) r.Add(eos);
        return new TrainingExample(p.Concat(r).ToArray(), Enumerable.Repeat(TrainOnPrompt, p.Length).Concat(Enumerable.Repeat(true, r.Count)).ToArray());
    }

    /// <summary>The prompt of a conversation for generation (chat template with the generation prompt).</summary>
    public int[] PromptIds(IReadOnlyList<ChatMessage> messages)
    {
        if (_template == null)
        {
            var user = string.Join("\n\n", messages.Where(m => m.Role == "user").Select(m => m.Content));
            return _tok.Encode(string.Format(AlpacaPrompt, user), addSpecialTokens: true);
        }
        var text = _template.Render(messages, addGenerationPrompt: true, _tok.BosToken, _tok.EosToken);
        var ids = _tok.Encode(text, addSpecialTokens: false).ToList();
        if (_tok.BosId is int bos && _tok.AddBosToken == true && (ids.Count == 0 || ids[0] != bos)) ids.Insert(0, bos);
        return ids.ToArray();
    }
}
