// The captions page: microphone -> AudioWorklet (PCM16, 16 kHz where the browser allows) -> the
// gateway's /v1/stream; partials, finals and translations rendered one column per language.
// URLs are relative to the document base, so the page works behind a path prefix.
'use strict';
(() => {
  const params = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const ui = { toggle: $('toggle'), state: $('state'), latency: $('latency'), rate: $('rate'),
               message: $('message'), columns: $('columns'), source: $('col-source'), partial: $('partial') };
  // Read by tests (and handy in the console): everything the page has received.
  const lt = window.__livetranslate = { state: 'idle', finals: [], translations: {}, errors: [],
                                        latencies: [], sessionId: null, lastSegmentId: null };
  let ws = null, audio = null, wanted = false, retry = 0, targets = [];

  function setState(state, message, isError) {
    lt.state = state;
    ui.state.textContent = state;
    ui.state.dataset.state = state;
    if (message !== undefined) {
      ui.message.textContent = message;
      ui.message.className = isError ? 'error' : '';
    }
  }

  function streamUrl() {
    const url = new URL('v1/stream', document.baseURI);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (params.get('token')) url.searchParams.set('token', params.get('token'));
    return url.toString();
  }

  function column(lang) {
    let list = document.getElementById('col-' + lang);
    if (!list) {
      const section = document.createElement('section');
      section.className = 'column';
      section.dataset.lang = lang;
      const title = document.createElement('h2');
      title.textContent = lang;
      list = document.createElement('ol');
      list.className = 'segments';
      list.id = 'col-' + lang;
      section.append(title, list);
      ui.columns.append(section);
    }
    return list;
  }

  function row(list, segmentId) {
    let li = list.querySelector(`li[data-segment="${segmentId}"]`);
    if (!li) {
      li = document.createElement('li');
      li.dataset.segment = String(segmentId);
      // Keep rows in segment order even when a translation lands before an earlier one.
      const after = [...list.children].find((c) => Number(c.dataset.segment) > segmentId);
      list.insertBefore(li, after || null);
    }
    return li;
  }

  function showLatency(seconds) {
    lt.latencies.push(seconds);
    const recent = lt.latencies.slice(-20).sort((a, b) => a - b);
    const median = recent[Math.floor(recent.length / 2)];
    ui.latency.textContent = `latency ${seconds.toFixed(2)} s (median ${median.toFixed(2)} s)`;
  }

  function onEvent(ev) {
    switch (ev.type) {
      case 'session.started':
        lt.sessionId = ev.sessionId;
        targets = ev.targetLanguages || [];
        targets.forEach(column);
        retry = 0;
        setState('live', ev.resumed ? 'Resumed session ' + ev.sessionId : 'Listening…');
        break;
      case 'transcript.partial':
        ui.partial.textContent = ev.text;
        break;
      case 'transcript.final': {
        if (lt.lastSegmentId !== null && ev.segmentId <= lt.lastSegmentId) break;
        lt.lastSegmentId = ev.segmentId;
        lt.finals.push(ev);
        const li = row(ui.source, ev.segmentId);
        li.textContent = '';
        if (ev.speaker) {
          const who = document.createElement('span');
          who.className = 'speaker';
          who.textContent = ev.speaker;
          li.append(who);
        }
        li.append(document.createTextNode(ev.text));
        ui.partial.textContent = '';
        if (typeof ev.latency === 'number') showLatency(ev.latency);
        break;
      }
      case 'translation':
        (lt.translations[ev.language] = lt.translations[ev.language] || []).push(ev);
        row(column(ev.language), ev.segmentId).textContent = ev.text;
        break;
      case 'error':
        lt.errors.push(ev);
        if (ev.segmentId !== undefined && ev.segmentId !== null && ev.language) {
          const li = row(column(ev.language), ev.segmentId);
          li.textContent = '(translation unavailable)';
          li.className = 'failed';
        } else {
          setState(lt.state, `${ev.code}: ${ev.message}`, true);
        }
        break;
      case 'session.ended':
        setState('ended', 'Session ended');
        lt.sessionId = null;
        break;
    }
  }

  function connect() {
    setState(retry ? 'reconnecting' : 'connecting');
    const socket = ws = new WebSocket(streamUrl());
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      const start = { type: 'session.start', sampleRate: audio.context.sampleRate,
                      encoding: 'pcm_s16le', channels: 1 };
      if (lt.sessionId) { start.sessionId = lt.sessionId; start.lastSegmentId = lt.lastSegmentId ?? -1; }
      socket.send(JSON.stringify(start));
    };
    socket.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    socket.onclose = (e) => {
      if (ws !== socket) return;
      ws = null;
      if (!wanted) return;
      if (e.code === 1008) {  // refused (token, origin, policy): retrying will not help
        setState('error', `Connection refused: ${e.reason || 'policy'}`, true);
        return;
      }
      const delay = Math.min(10000, 500 * 2 ** retry++);
      setState('reconnecting', `Connection lost (${e.code}); retrying in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(() => { if (wanted && !ws) connect(); }, delay);
    };
  }

  // Capture at 16 kHz, the rate the audio service decodes, where the browser can: it resamples the
  // microphone itself, the page sends a third of the bytes of 48 kHz, and the gateway passes the
  // audio through instead of resampling it. A browser that cannot feed a microphone into a context
  // of another rate (NotSupportedError) captures at the device's own rate, which the gateway
  // resamples; so does ?rate=native.
  async function openContext(stream) {
    if (params.get('rate') !== 'native') {
      let context = null;
      try {
        context = new AudioContext({ sampleRate: 16000 });
        return { context, source: context.createMediaStreamSource(stream) };
      } catch (e) {
        console.warn('no 16 kHz capture; using the device rate', e);
        if (context) await context.close();
      }
    }
    const context = new AudioContext();
    return { context, source: context.createMediaStreamSource(stream) };
  }

  async function start() {
    wanted = true;
    ui.toggle.textContent = 'Stop';
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
      const { context, source } = await openContext(stream);
      await context.audioWorklet.addModule('static/pcm-worklet.js');
      const node = new AudioWorkletNode(context, 'pcm-capture');
      node.port.onmessage = (m) => {
        lt.framesCaptured = (lt.framesCaptured || 0) + 1;
        if (ws && ws.readyState === WebSocket.OPEN) ws.send(m.data);
      };
      // A worklet only runs while the graph pulls it: feed its (silent) output to the speakers.
      source.connect(node).connect(context.destination);
      audio = { stream, context, node };
      if (context.state === 'suspended') await context.resume();
      ui.rate.textContent = `${(context.sampleRate / 1000).toFixed(1)} kHz`;
      connect();
    } catch (e) {
      wanted = false;
      ui.toggle.textContent = 'Start microphone';
      setState('error', `Microphone unavailable: ${e.message || e}`, true);
    }
  }

  function stop() {
    wanted = false;
    ui.toggle.textContent = 'Start microphone';
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'session.end' }));
    if (audio) {
      audio.node.disconnect();
      audio.stream.getTracks().forEach((t) => t.stop());
      audio.context.close();
      audio = null;
    }
  }

  ui.toggle.addEventListener('click', () => (wanted ? stop() : start()));
  if (params.get('autostart') === '1') start();
})();
