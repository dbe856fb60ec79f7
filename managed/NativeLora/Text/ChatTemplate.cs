using System.Collections;
using System.Text.Json;

namespace NativeLora.Text;

/// <summary>
/// One chat message. <see cref="Fields"/> carries any other keys the template may read
/// (tool_calls, reasoning_content, name…) as plain .NET values: string, bool, numbers, null,
/// dictionaries with string keys, lists, or <see cref="JsonElement"/>. A "content" entry there
/// replaces <see cref="Content"/>, for structured content (a list of text/image parts).
/// </summary>
public sealed record ChatMessage(string Role, string? Content)
{
    public IReadOnlyDictionary<string, object?>? Fields { get; init; }
}

/// <summary>
/// A template that cannot be parsed or rendered. Line and Column (1-based) locate the construct;
/// <see cref="RaisedByTemplate"/> is true when the template itself called raise_exception(message),
/// and then Message is exactly the template's message.
/// </summary>
public sealed class ChatTemplateException(string message, int line, int column, bool raisedByTemplate = false, Exception? inner = null)
    : Exception(message, inner)
{
    public int Line { get; } = line;
    public int Column { get; } = column;
    public bool RaisedByTemplate { get; } = raisedByTemplate;
}

/// <summary>
/// A Hugging Face chat template (the Jinja in tokenizer_config.json's "chat_template"), parsed once
/// and rendered the way transformers' apply_chat_template renders it with Python Jinja: trim_blocks
/// and lstrip_blocks on, Python semantics for values, raise_exception and strftime_now available.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Node> _program;

    /// <summary>Parses the template; a syntax error throws <see cref="ChatTemplateException"/>.</summary>
    public ChatTemplate(string template)
    {
        ArgumentNullException.ThrowIfNull(template);
        _program = JinjaParser.Parse(template);
    }

    /// <summary>The clock behind strftime_now (local time); tests pin it.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;

    /// <summary>
    /// Renders a conversation. Like transformers, the template sees messages, add_generation_prompt,
    /// bos_token / eos_token (left undefined when null), tools and documents (None unless given in
    /// <paramref name="extra"/>), and every entry of <paramref name="extra"/> (e.g. enable_thinking).
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? bosToken, string? eosToken,
        IReadOnlyDictionary<string, object?>? extra = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var interpreter = new JinjaInterpreter(Clock);
        var globals = new Scope(null);
        JinjaBuiltins.AddGlobals(globals, interpreter);
        var context = new Scope(globals);
        context.Set("messages", new ListValue(messages.Select(m => (JinjaValue)MessageValue(m)).ToList()));
        context.Set("add_generation_prompt", BoolValue.Of(addGenerationPrompt));
        if (bosToken != null) context.Set("bos_token", Py.Str(bosToken));
        if (eosToken != null) context.Set("eos_token", Py.Str(eosToken));
        context.Set("tools", NoneValue.Instance);
        context.Set("documents", NoneValue.Instance);
        if (extra != null)
            foreach (var (key, value) in extra)
                context.Set(key, ToValue(value, key));
        // Top-level {% set %} lands in a scope of its own, so the inputs above stay as given.
        try
        {
            return interpreter.Render(_program, new Scope(context));
        }
        catch (Exception e) when (e is not (ChatTemplateException or OutOfMemoryException))
        {
            // A failure the interpreter did not anticipate still reaches the caller as a template error.
            throw new ChatTemplateException($"rendering failed: {e.Message}", 0, 0, inner: e);
        }
    }

    private static DictValue MessageValue(ChatMessage m)
    {
        var d = new DictValue();
        d.Items["role"] = Py.Str(m.Role);
        d.Items["content"] = m.Content == null ? NoneValue.Instance : Py.Str(m.Content);
        if (m.Fields != null)
            foreach (var (key, value) in m.Fields)
                d.Items[key] = ToValue(value, key);
        return d;
    }

    /// <summary>Converts the plain .NET values a caller may pass into template values (no reflection).</summary>
    private static JinjaValue ToValue(object? value, string where) => value switch
    {
        null => NoneValue.Instance,
        string s => Py.Str(s),
        bool b => BoolValue.Of(b),
        int or long or short or byte or sbyte or ushort or uint => new IntValue(Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture)),
        float or double or decimal => new FloatValue(Convert.ToDouble(value, System.Globalization.CultureInfo.InvariantCulture)),
        JsonElement e => FromJson(e),
        ChatMessage m => MessageValue(m),
        IReadOnlyDictionary<string, object?> map => Dict(map, where),
        IDictionary<string, object?> map => Dict(map, where),
        IDictionary map => Dict(Entries(map, where), where),
        IEnumerable list => new ListValue(list.Cast<object?>().Select(x => ToValue(x, where)).ToList()),
        _ => throw new ArgumentException($"'{where}': values of type {value.GetType().Name} cannot be passed to a chat template"),
    };

    /// <summary>Any other dictionary (e.g. Dictionary&lt;string, string&gt;), through the non-generic interface.</summary>
    private static IEnumerable<KeyValuePair<string, object?>> Entries(IDictionary map, string where)
    {
        var e = map.GetEnumerator();
        while (e.MoveNext())
            yield return new(e.Key as string ?? throw new ArgumentException($"'{where}': dictionary keys must be strings"), e.Value);
    }

    private static DictValue Dict(IEnumerable<KeyValuePair<string, object?>> map, string where)
    {
        var d = new DictValue();
        foreach (var (key, value) in map) d.Items[key] = ToValue(value, where + "." + key);
        return d;
    }

    private static JinjaValue FromJson(JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String: return Py.Str(e.GetString()!);
            case JsonValueKind.True: return BoolValue.True;
            case JsonValueKind.False: return BoolValue.False;
            case JsonValueKind.Null: return NoneValue.Instance;
            case JsonValueKind.Number:
                return e.TryGetInt64(out long i) && !e.GetRawText().Contains('.') && !e.GetRawText().Contains('e', StringComparison.OrdinalIgnoreCase)
                    ? new IntValue(i) : new FloatValue(e.GetDouble());
            case JsonValueKind.Array: return new ListValue(e.EnumerateArray().Select(FromJson).ToList());
            case JsonValueKind.Object:
                var d = new DictValue();
                foreach (var p in e.EnumerateObject()) d.Items[p.Name] = FromJson(p.Value);
                return d;
            default: return NoneValue.Instance;
        }
    }
}
