namespace NativeLora.Text;

/// <summary>
/// OpenAI's `stop` strings over streamed text: the output ends before the first stop string and
/// never contains it. While streaming, text that could still become the start of a stop string is
/// held back until the next token decides.
/// </summary>
public sealed class StopStrings
{
    private readonly string[] _stops;
    private readonly System.Text.StringBuilder _text = new();
    private int _emitted;

    public StopStrings(IEnumerable<string> stops) => _stops = stops.Where(s => s.Length > 0).ToArray();

    /// <summary>True once a stop string was found (the text is cut before it).</summary>
    public bool Stopped { get; private set; }
    public string Text => _text.ToString();

    /// <summary>Adds decoded text; returns the part that can be sent now.</summary>
    public string Push(string piece)
    {
        if (Stopped) return "";
        _text.Append(piece);
        var text = _text.ToString();
        int cut = -1;
        foreach (var s in _stops)
        {
            int i = text.IndexOf(s, Math.Max(0, _emitted - s.Length + 1), StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0)
        {
            Stopped = true;
            _text.Length = cut;
            return Take(cut);
        }
        int hold = 0;
        foreach (var s in _stops)
            for (int n = Math.Min(s.Length - 1, text.Length); n > hold; n--)
                if (string.CompareOrdinal(text, text.Length - n, s, 0, n) == 0) { hold = n; break; }
        return Take(Math.Max(_emitted, text.Length - hold));
    }

    /// <summary>At the end of generation: whatever was held back (no stop string completed).</summary>
    public string Flush() => Take(_text.Length);

    private string Take(int upTo)
    {
        if (upTo <= _emitted) return "";
        var s = _text.ToString(_emitted, upTo - _emitted);
        _emitted = upTo;
        return s;
    }
}
