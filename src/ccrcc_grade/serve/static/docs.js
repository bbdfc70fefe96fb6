// The API documentation page: Swagger UI from the workstation's own files (no CDN), started here
// rather than inline, so the page's Content-Security-Policy can forbid inline script.
"use strict";
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
